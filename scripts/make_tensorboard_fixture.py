"""An event file written by PyTorch's TensorBoard writer, for hone's reader test
(src/exec/tensorboard.rs), and a check that TensorBoard's own reader reads hone's files.

    pip install torch tensorboard
    python scripts/make_tensorboard_fixture.py            # writes tests/fixtures/tensorboard/
    python scripts/make_tensorboard_fixture.py DIR        # prints the scalars TensorBoard reads in DIR
"""
import glob
import os
import shutil
import sys

if len(sys.argv) > 1:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for path in sorted(glob.glob(os.path.join(sys.argv[1], "**", "events.out.tfevents.*"), recursive=True)):
        acc = EventAccumulator(path)
        acc.Reload()
        print(path)
        for tag in acc.Tags()["scalars"]:
            events = acc.Scalars(tag)
            print(f"  {tag}: {len(events)} points, steps {events[0].step}..{events[-1].step}, last {events[-1].value:.6g}")
    sys.exit(0)

from torch.utils.tensorboard import SummaryWriter

out = "tests/fixtures/tensorboard"
shutil.rmtree(out, ignore_errors=True)
w = SummaryWriter(out, filename_suffix=".fixture")
for step, (loss, lr) in enumerate([(2.5, 1e-3), (2.0, 9e-4), (1.25, 8e-4)], start=1):
    w.add_scalar("train/loss", loss, step)
    w.add_scalar("train/lr", lr, step)
w.add_scalar("eval/loss", 1.75, 3)
w.close()
(written,) = os.listdir(out)
os.rename(os.path.join(out, written), os.path.join(out, "pytorch.tfevents"))
print(os.listdir(out))
