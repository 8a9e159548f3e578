"""``torchrun --nproc_per_node=2 -m clipforge.cli embed``: rank r embeds the shards i with i % 2 == r (gloo on CPU),
and the store is the one a single process writes: the same features within float noise, the same metadata."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np

from clipforge.embed.store import embed_to_store
from clipforge.embed.store_reader import FeatureStore

from clipforge.towers import build_tower

from storeutil import IMAGE_SIZE, IMAGE_TOWER, make_shards


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_torchrun_embed_equals_one_process(tmp_path):
    shards = make_shards(tmp_path / "shards", n_shards=4, per_shard=3, bad=True)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "clipforge.cli", "embed", "--data", f"wds:{tmp_path / 'shards'}",
           "--out", str(out), "--image-size", str(IMAGE_SIZE), "--backend", "off", "--text-tower", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[rank 0] shard 0 " in r.stdout and "[rank 0] shard 2 " in r.stdout      # i % world == rank
    assert "[rank 1] shard 1 " in r.stdout and "[rank 1] shard 3 " in r.stdout
    assert "[rank 0] shard 1 " not in r.stdout and "[rank 1] shard 0 " not in r.stdout
    assert "4 of 4 shards done" in r.stdout

    image = build_tower(IMAGE_TOWER, "image", IMAGE_SIZE).lock()  # images only: the text path is the crash test's
    embed_to_store([str(s) for s in shards], tmp_path / "one", image, None, backend="off")
    two, one = FeatureStore(out), FeatureStore(tmp_path / "one")
    assert two.n == one.n == 12 and two.skipped() == one.skipped() and len(one.skipped()) == 2
    assert two.metadata().equals(one.metadata())
    assert two.manifest == one.manifest
    for i in range(4):
        a, b = two.read(i, 0, 3)[0], one.read(i, 0, 3)[0]
        assert a.shape == (3, image.dim)
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)
