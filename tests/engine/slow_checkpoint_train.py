"""Helper run by test_kill_resume.py: ``tools/train.py`` whose 3rd checkpoint write stalls halfway.

usage: python slow_checkpoint_train.py CONFIG [key=value ...]
The stalled write leaves half a temp file next to the complete checkpoint of the write before, which
is the moment the test kills the process (SIGKILL: no handler, no cleanup); the file ./stalled
marks that moment.
"""

import io
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import samft.engine.checkpoint as checkpoint  # noqa: E402
from samft.cli import train_main  # noqa: E402

real_save = checkpoint.torch.save
writes = 0


def stalling_save(obj, handle, *args, **kwargs):
    global writes
    writes += 1
    if writes < 3:
        return real_save(obj, handle, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    handle.write(data[: len(data) // 2])
    handle.flush()
    Path("stalled").touch()  # tells the test that the write is half done
    time.sleep(600)
    handle.write(data[len(data) // 2 :])


checkpoint.torch.save = stalling_save

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
