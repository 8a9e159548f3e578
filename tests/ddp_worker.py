"""Run under torchrun by tests/test_distributed.py: one rank's share of a global batch, then 3 optimizer steps."""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from objutil import _batch, _model  # noqa: E402

from clipforge.losses.contrastive import ContrastiveObjective  # noqa: E402
from clipforge.train.distributed import init_distributed, shutdown, wrap  # noqa: E402


def main(out: str, kind: str) -> None:
    torch.set_num_threads(1)
    world = init_distributed()
    model = _model()
    model.image_tower.lock()
    model.text_tower.lock()
    objective = ContrastiveObjective(model, kind=kind)
    ddp = wrap(objective, world)
    batch = _batch(n=12)
    local = batch.slice(slice(*world.shard(np.arange(12))[[0, -1]] + [0, 1]))
    loss = ddp(local)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    for step in range(2):
        opt.zero_grad()
        ddp(local).backward()
        opt.step()
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"loss": loss.detach(), "grads": grads, "params": params, "world": world.size, "rank": world.rank},
               Path(out) / f"rank{world.rank}.pt")
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
