"""A trainer process of the rank-exact e2e tests: ``python rank_trainer.py '<json>'``.

Run by torchrun (``"ddp": true``: gloo process group, a tiny DDP model, one all-reduce
per step) or as a plain process with ``RANK``/``WORLD_SIZE`` set by the test. It reads
``mx8.load`` through the agent in ``MX8_AGENT_URL`` with the usual epoch loop and appends
one JSON line per step to ``<out>/rank-<RANK>.jsonl`` ({"epoch", "step", "len", "ids",
"ok": payloads are the objects' bytes}), flushed, so a killed trainer leaves its record.

Options: ``resume`` (a state file to load first), ``checkpoint_step`` k (save
``state_dict()`` after k steps of epoch 0 to ``<out>/state-<RANK>.json``),
``hang_after_step`` h (take step h of epoch 0, which acknowledges the steps before it,
then wait to be killed), ``stop_after_epoch``, ``step_delay_s``, ``seed``/``batch_size``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _payload_ok(batch: object) -> bool:
    # The e2e datasets hold str(i).encode() * 8 at sample i (objects in key order).
    ids = batch.sample_ids.tolist()  # type: ignore[attr-defined]
    return batch.payloads == [(f"{i:05d}".encode()) * 8 for i in ids]  # type: ignore[attr-defined]


def main() -> int:
    cfg = json.loads(sys.argv[1])
    rank = int(os.environ["RANK"])
    out_dir = Path(cfg["out"])
    import mx8

    kwargs = {"batch_size": cfg["batch_size"]}
    if "seed" in cfg:
        kwargs["seed"] = cfg["seed"]
    loader = mx8.load(cfg["link"], **kwargs)
    model = opt = None
    if cfg.get("ddp"):
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
    start = 0
    if cfg.get("resume"):
        loader.load_state_dict(json.loads(Path(cfg["resume"]).read_text()))
        start = loader.epoch
    last_epoch = cfg.get("stop_after_epoch", loader.epochs - 1)
    with open(out_dir / f"rank-{rank}.jsonl", "a") as out:
        for epoch in range(start, last_epoch + 1):
            loader.set_epoch(epoch)  # right after a resume: keeps the resumed position
            length = len(loader)
            step = loader.state_dict()["step"]
            for batch in loader:
                ids = batch.sample_ids.tolist()
                if model is not None:
                    import torch

                    x = torch.tensor([[float(len(ids)), float(sum(ids) % 97), 1.0, float(step)]])
                    loss = model(x).sum()
                    opt.zero_grad()  # type: ignore[union-attr]
                    loss.backward()  # the all-reduce: every rank must take this step
                    opt.step()  # type: ignore[union-attr]
                record = {"epoch": epoch, "step": step, "len": length, "ids": ids}
                record["ok"] = _payload_ok(batch)
                out.write(json.dumps(record) + "\n")
                out.flush()
                step += 1
                if epoch == 0 and step == cfg.get("checkpoint_step"):
                    tmp = out_dir / f".state-{rank}.json"
                    tmp.write_text(json.dumps(loader.state_dict()))
                    tmp.replace(out_dir / f"state-{rank}.json")
                if epoch == 0 and step > cfg.get("hang_after_step", 1 << 30):
                    while True:  # steps before this one are acknowledged: wait for the kill
                        time.sleep(1)
                time.sleep(cfg.get("step_delay_s", 0))
    if model is not None:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    loader.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
