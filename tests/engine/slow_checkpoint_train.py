"""Helper run by test_kill_resume.py: ``tools/train.py`` that stalls (on rank 0) at a chosen moment.

usage: python slow_checkpoint_train.py [--stall=write@K|idle@K] CONFIG [key=value ...]
(or the same under ``python -m torch.distributed.run``).

``write@K`` (the default, ``write@3``): the write of step K's checkpoint stalls halfway, which leaves
half a temp file next to the complete checkpoint of the write before. ``idle@K``: rank 0 stalls after
step K and its checkpoint, before step K+1 (the other ranks wait in that step's collectives). That
is the moment the test kills the job (SIGKILL: no handler, no cleanup); the file ./stalled marks it.
"""

import io
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import samft.engine.checkpoint as checkpoint  # noqa: E402
from samft.cli import train_main  # noqa: E402
from samft.engine.trainer import Trainer  # noqa: E402

real_save = checkpoint.torch.save
real_train_step = Trainer.train_step
stall_kind, stall_step = "write", 3


def stall():
    Path("stalled").touch()  # tells the test that the moment has come
    time.sleep(600)


def stalling_save(obj, handle, *args, **kwargs):
    if stall_kind != "write" or not isinstance(obj, dict) or obj.get("step") != stall_step:
        return real_save(obj, handle, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    handle.write(data[: len(data) // 2])
    handle.flush()
    stall()
    handle.write(data[len(data) // 2 :])


def idling_train_step(self, micro):
    if stall_kind == "idle" and self.step == stall_step and self.dist.is_main:
        stall()
    return real_train_step(self, micro)


checkpoint.torch.save = stalling_save
Trainer.train_step = idling_train_step

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0].startswith("--stall="):
        kind, step = argv.pop(0).removeprefix("--stall=").split("@")
        stall_kind, stall_step = kind, int(step)
    sys.exit(train_main(argv))
