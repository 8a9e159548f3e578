"""torchrun with 2 CPU processes (gloo): the distributed loss and gradients equal the single-process ones on the
same global batch, because features are gathered with gradients and DDP averages."""
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipforge.losses.contrastive import ContrastiveObjective

from objutil import _batch, _model

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_two_process_torchrun_matches_single_process(tmp_path, kind):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           f"--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(WORKER), str(tmp_path), kind]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]
    assert [x["world"] for x in ranks] == [2, 2]

    model = _model()
    model.image_tower.lock()
    model.text_tower.lock()
    objective = ContrastiveObjective(model, kind=kind)
    batch = _batch(n=12)
    loss = objective(batch)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    for _ in range(2):
        opt.zero_grad()
        objective(batch).backward()
        opt.step()

    for rank in ranks:
        assert torch.allclose(rank["loss"], loss.detach(), atol=1e-6)       # every rank sees the global batch
        assert rank["grads"].keys() == grads.keys() and len(grads) >= 6
        for n, g in grads.items():
            assert torch.allclose(rank["grads"][n], g, atol=1e-6), n        # DDP-averaged = single process
        for n, p in model.named_parameters():
            if p.requires_grad:
                assert torch.allclose(rank["params"][n], p.detach(), atol=1e-5), n  # 3 steps later: still in lockstep
