"""soap.SOAP and soap.Shampoo inside Hugging Face's ``transformers.Trainer``: they train, and
the Trainer's own checkpoint (``optimizer.pt`` through ``state_dict()``) resumes to the same
weights as an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from models.build import build_model
from soap import build_optimizer

transformers = pytest.importorskip("transformers")


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, seq: int = 16, vocab: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        # a learnable pattern: each sequence counts up from a random start
        starts = torch.randint(0, vocab, (n, 1), generator=g)
        self.ids = (starts + torch.arange(seq)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _train(
    tmp, cls: str, max_steps: int, resume: str | None = None
) -> tuple[torch.nn.Module, list]:
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=64, max_seq_len=16, seed=0)
    opt = build_optimizer(model, cls, lr=3e-3, precondition_frequency=2)
    args = transformers.TrainingArguments(
        output_dir=str(tmp),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        lr_scheduler_type="linear",
        save_steps=3,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / 8)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=_Tokens(), optimizers=(opt, sched)
    )
    trainer.train(resume_from_checkpoint=resume)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return model, losses


@pytest.mark.parametrize("cls", ["soap", "shampoo"])
def test_hf_trainer_trains_and_resumes_exactly(tmp_path, cls) -> None:
    full, losses = _train(tmp_path / "full", cls, 6)
    assert losses[-1] < losses[0] - 0.05, losses
    _train(tmp_path / "cut", cls, 3)  # writes checkpoint-3, then "dies"
    resumed, _ = _train(tmp_path / "cut", cls, 6, resume=str(tmp_path / "cut" / "checkpoint-3"))
    for (n, a), b in zip(full.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
