"""The Flower side of the peer benchmark: fedlora's federated LoRA task under Flower's simulation
engine (Ray backend), FedAvg over the LoRA factors, no evaluation.

    python flower_sim.py --clients 100 --per-round 10 --rounds 3 --local-steps 10 \
        --timings-out flower.json
    python flower_sim.py --check      # the PyTorch model and tokenizer against the data README

Writes --timings-out as JSON: {"round_seconds": [...], "train_loss": [...], "flwr": version}.
Wall time and memory of the whole process tree are measured from outside (measure.py).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from pathlib import Path

import torch

import task

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / "assets/models/stories260K/stories260K.bin"
TOKENIZER = REPO / "assets/models/stories260K/tok512.bin"
DATA = REPO / "assets/datasets/tinyshakespeare/input.txt"


def run_flower(args: argparse.Namespace) -> dict[str, object]:
    import flwr
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from client_app import app as client_app

    class TimedFedAvg(FedAvg):
        """FedAvg that records each round's wall time, from configuring its training (sampling
        clients) to the end of aggregation, and the aggregated training loss."""

        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.round_seconds: list[float] = []
            self.train_loss: list[float] = []
            self._round_start = 0.0

        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                            grid: Grid) -> Iterable[Message]:
            self._round_start = time.perf_counter()
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Iterable[Message]
                            ) -> tuple[ArrayRecord | None, MetricRecord | None]:
            replies = list(replies)
            if len(replies) != args.per_round or any(m.has_error() for m in replies):
                raise RuntimeError(f"round {server_round}: {len(replies)} replies, expected "
                                   f"{args.per_round} without errors")
            arrays, metrics = super().aggregate_train(server_round, replies)
            seconds = time.perf_counter() - self._round_start
            self.round_seconds.append(seconds)
            loss = float(metrics["train_loss"]) if metrics else float("nan")
            self.train_loss.append(loss)
            print(f"flower round {server_round}: {len(replies)} clients, train_loss {loss:.4f}, "
                  f"{seconds:.1f} s", flush=True)
            return arrays, metrics

    strategy = TimedFedAvg(fraction_train=args.per_round / args.clients, fraction_evaluate=0.0,
                           min_train_nodes=args.per_round, min_available_nodes=args.clients)
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(args.seed)
        initial = task.load_model(MODEL, args.rank, args.alpha).lora_state_dict()
        train_config = ConfigRecord({
            "model_path": str(MODEL), "tokenizer_path": str(TOKENIZER), "data_path": str(DATA),
            "rank": args.rank, "alpha": args.alpha, "seq_len": args.seq_len,
            "heldout_fraction": args.heldout_fraction, "partition_seed": args.partition_seed,
            "learning_rate": args.learning_rate, "warmup_steps": args.warmup_steps,
            "local_steps": args.local_steps, "batch_size": args.batch_size,
            "grad_clip": args.grad_clip, "weight_decay": 0.0, "seed": args.seed,
        })
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=args.rounds,
                       train_config=train_config)

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=args.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    if len(strategy.round_seconds) != args.rounds:
        raise RuntimeError(f"{len(strategy.round_seconds)} of {args.rounds} rounds completed")
    return {"round_seconds": strategy.round_seconds, "train_loss": strategy.train_loss,
            "flwr": flwr.__version__, "torch": torch.__version__}


def check() -> None:
    """The PyTorch stories260K and tokenizer against the goldens of the data README (section 1d),
    and the base model's loss on a client's first training batch."""
    tokenizer = task.Tokenizer(TOKENIZER, vocab_size=512)
    model = task.load_model(MODEL, rank=8, alpha=16)
    ids = tokenizer.encode(b"Once upon a time", bos=True)
    assert ids == [1, 403, 407, 261, 378], ids
    with torch.no_grad():
        logits = model(torch.tensor([[task.BOS]]))[0, 0]
        expected = torch.tensor([-6.2229, 8.4043, -6.2237, -6.2225, -6.2220])
        assert logits.argmax().item() == 403 and torch.allclose(logits[:5], expected, atol=1e-3)
        greedy = [task.BOS]
        for _ in range(20):
            greedy.append(int(model(torch.tensor([greedy]))[0, -1].argmax()))
        assert greedy == [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317,
                          426, 338, 401, 396, 267, 337], greedy
        stream = task.client_train_stream(task.read_text(DATA), tokenizer, 100, 0, 0.1, 1234)
        windows = task.make_windows(stream, 128)
        loss = task.batch_loss(model, windows[:8]).item()
    print(f"check ok: tokenizer and logits match the goldens; client 0 of 100 has "
          f"{len(windows)} windows, base-model loss {loss:.3f} nats/token on its first 8")
    assert 3.5 < loss < 6.0, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only run the self-check")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--heldout-fraction", type=float, default=0.1)
    parser.add_argument("--partition-seed", type=int, default=1234)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--timings-out", type=Path, help="write round timings here (JSON)")
    args = parser.parse_args()
    if args.check:
        check()
        return
    if not 1 <= args.per_round <= args.clients:
        parser.error("--per-round must be in [1, --clients]")
    result = run_flower(args)
    if args.timings_out:
        args.timings_out.write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
