"""Progress off a terminal (Slurm, CI, nohup): plain lines, no carriage-return bars."""

from __future__ import annotations

from scripts.trainer.logs import Logs, Progress


def test_progress_off_a_tty_prints_plain_lines(capsys) -> None:
    prog = Progress("soap", total=100, initial=0, tokens_per_step=1000, seconds=3600.0)
    assert not prog.tty  # pytest captures stdout: not a terminal
    logs = Logs([prog], log_every=1)
    for step in range(1, 101):
        rec = {"step": step, "loss": 5.0 - step / 100, "lr": 1e-3, "time_step": 0.5}
        if step % 50 == 0:
            rec["eval_loss"] = 4.5
        logs.log(rec, last=step == 100)
    logs.close(None)
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    # the first line (the clock starts at 0), evaluations (50, 100) and the last step; the
    # 10-minute interval keeps every other step out of the log
    assert [ln.split()[2] for ln in lines] == ["1/100", "50/100", "100/100"], lines
    assert lines[1] == "soap: step 50/100 loss 4.5000 eval 4.5000 lr 0.001 2,000 tok/s"
