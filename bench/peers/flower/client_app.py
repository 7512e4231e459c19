"""Flower ClientApp of the peer benchmark: one fedlora-equivalent client per Flower node.

Written the way Flower's PyTorch templates (`flwr new`) and FlowerTune's LLM template write a
client: every train message builds the base model and wraps it with LoRA, loads the global
adapter, trains, and replies with the adapter only. The client's tokenized data share is cached
per worker process (the templates cache their FederatedDataset in a module global the same way).
It lives in its own module so Ray pickles the ClientApp by reference.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import task

app = ClientApp()


@functools.lru_cache(maxsize=None)
def load_windows(data_path: str, tokenizer_path: str, num_clients: int, index: int,
                 heldout_fraction: float, partition_seed: int, seq_len: int) -> torch.Tensor:
    """Client `index`'s training windows (fedlora's contiguous share minus its held-out part)."""
    tokenizer = task.Tokenizer(Path(tokenizer_path), vocab_size=512)
    stream = task.client_train_stream(task.read_text(Path(data_path)), tokenizer, num_clients,
                                      index, heldout_fraction, partition_seed)
    return task.make_windows(stream, seq_len)


@app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)  # One core per actor (client_resources num_cpus = 1).
    config = msg.content["config"]
    index = int(context.node_config["partition-id"])
    num_clients = int(context.node_config["num-partitions"])

    model = task.load_model(Path(str(config["model_path"])), int(config["rank"]),
                            float(config["alpha"]))
    missing, unexpected = model.load_state_dict(msg.content["arrays"].to_torch_state_dict(),
                                                strict=False)
    if unexpected or any(".lora_" in name for name in missing):
        raise ValueError(f"global adapter does not fit the model: {missing=} {unexpected=}")

    windows = load_windows(str(config["data_path"]), str(config["tokenizer_path"]), num_clients,
                           index, float(config["heldout_fraction"]),
                           int(config["partition_seed"]), int(config["seq_len"]))
    spec = task.TrainSpec(learning_rate=float(config["learning_rate"]),
                          warmup_steps=int(config["warmup_steps"]),
                          local_steps=int(config["local_steps"]),
                          batch_size=int(config["batch_size"]),
                          grad_clip=float(config["grad_clip"]),
                          weight_decay=float(config["weight_decay"]))
    seed = task.mix_seed(int(config["seed"]) + int(config["server-round"]), index)
    loss = task.train_lora(model, windows, spec, seed)

    reply = RecordDict({
        "arrays": ArrayRecord(model.lora_state_dict()),
        # FedAvg weights by "num-examples": the windows held, like fedlora's weighting: examples.
        "metrics": MetricRecord({"train_loss": loss, "num-examples": len(windows)}),
    })
    return Message(content=reply, reply_to=msg)
