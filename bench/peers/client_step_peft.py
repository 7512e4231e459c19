"""The peer of bench/client_step: one LoRA training step in PyTorch eager + Hugging Face PEFT.

The same work as bench_client_step (see the header of bench/client_step.cc), on the same shapes,
threads and device:
  - transformers' LlamaForCausalLM with the same geometry: stories260K read from the llama2.c
    legacy checkpoint (wq/wk rows permuted into HF's rotate_half layout, data README 1c), or the
    random presets `small` and `0.5b` (transformers' own N(0, 0.02) initialisation);
  - PEFT LoRA on q, k, v, o, gate, up and down of every layer, rank --rank, alpha 2·rank,
    dropout 0 (PEFT's initialisation: A Kaiming-uniform, B zero, as fedlora's);
  - every row of the batch is the same window of the same pseudo-random stream as the C++ side:
    input [BOS, w0..w_{T-2}], targets [w0..w_{T-1}], mean token cross-entropy;
  - the fedlora client's optimiser: AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0
    (PyTorch's default is 0.01), a fresh one per timed run, clip_grad_norm_(1.0), loss.item()
    every step; bf16 autocast on CUDA, float32 on the CPU.
Timing as on the C++ side: one untimed step (loss0), --warmup untimed steps, then the best of
--repeats runs of --steps steps. Attention is transformers' default (`sdpa`) unless --attn eager.

Prints one line per model, the C++ side's fields plus the library versions:
  client_step impl=peft model=M ... ms_per_step=X tokens_per_s=Y model_tflops=F [mfu=U] ...
Needs torch, transformers and peft (scripts/bench-client-step.sh installs them in a venv).
"""

from __future__ import annotations

import argparse
import os
import struct
import time
from pathlib import Path

import peft
import torch
import torch.nn.functional as F
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

BOS = 1
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name -> (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, seq_len); as in client_step.cc.
PRESETS = {
    "small": (512, 1376, 8, 8, 8, 32000, 2048),
    "0.5b": (1280, 3456, 24, 20, 20, 32000, 2048),
}


def hf_config(dim, hidden, layers, heads, kv_heads, vocab, seq_len) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=seq_len,
        rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=True, attention_bias=False,
        bos_token_id=BOS, eos_token_id=2, pad_token_id=0)


def load_stories260k(path: Path, attn: str):
    """The llama2.c legacy (v0) checkpoint as a LlamaForCausalLM (data README 1a and 1c)."""
    raw = path.read_bytes()
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    flat = torch.frombuffer(bytearray(raw[28:]), dtype=torch.float32)
    hs = dim // heads
    kv = kv_heads * hs
    cursor = 0

    def take(*shape):
        nonlocal cursor
        n = 1
        for s in shape:
            n *= s
        out = flat[cursor:cursor + n].reshape(shape).clone()
        cursor += n
        return out

    emb = take(vocab, dim)
    rms_att, wq, wk = take(layers, dim), take(layers, dim, dim), take(layers, kv, dim)
    wv, wo, rms_ffn = take(layers, kv, dim), take(layers, dim, dim), take(layers, dim)
    w1, w2, w3 = take(layers, hidden, dim), take(layers, dim, hidden), take(layers, hidden, dim)
    rms_final = take(dim)
    if not shared:
        raise SystemExit(f"{path}: a separate classifier is not supported here")

    def to_hf(w, n_heads):  # interleaved RoPE pairs -> HF's split halves
        return w.reshape(n_heads, hs // 2, 2, dim).transpose(1, 2).reshape(n_heads * hs, dim)

    sd = {"model.embed_tokens.weight": emb, "model.norm.weight": rms_final}
    for l in range(layers):
        p = f"model.layers.{l}."
        sd[p + "input_layernorm.weight"] = rms_att[l]
        sd[p + "post_attention_layernorm.weight"] = rms_ffn[l]
        sd[p + "self_attn.q_proj.weight"] = to_hf(wq[l], heads)
        sd[p + "self_attn.k_proj.weight"] = to_hf(wk[l], kv_heads)
        sd[p + "self_attn.v_proj.weight"] = wv[l]
        sd[p + "self_attn.o_proj.weight"] = wo[l]
        sd[p + "mlp.gate_proj.weight"] = w1[l]
        sd[p + "mlp.down_proj.weight"] = w2[l]
        sd[p + "mlp.up_proj.weight"] = w3[l]
    config = hf_config(dim, hidden, layers, heads, kv_heads, vocab, seq_len)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn).float()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise SystemExit(f"stories260K: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model


def build_model(name: str, assets: Path, attn: str):
    if name == "stories260k":
        return load_stories260k(assets / "models/stories260K/stories260K.bin", attn)
    if name not in PRESETS:
        raise SystemExit(f"unknown --model '{name}' (stories260k, small, 0.5b)")
    torch.manual_seed(0)
    config = hf_config(*PRESETS[name])
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).float()


def fixed_stream(length: int, vocab: int) -> list[int]:
    """The C++ side's FixedStream: an LCG from 42, ids in [3, vocab)."""
    out, x = [], 42
    for _ in range(length):
        x = (1103515245 * x + 12345) % (1 << 31)
        out.append(3 + x % (vocab - 3))
    return out


def run_one(name: str, args) -> None:
    device = torch.device(args.device)
    model = build_model(name, args.assets, args.attn)
    params = sum(p.numel() for p in model.parameters())  # Tied weights counted once.
    cfg = model.config
    matmul = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in TARGETS)
    matmul += cfg.vocab_size * cfg.hidden_size
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                      target_modules=TARGETS, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora).to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]

    stream = fixed_stream(args.seq, cfg.vocab_size)
    row_in, row_out = [BOS] + stream[:-1], stream
    cuda = device.type == "cuda"

    def train(steps: int) -> tuple[float, float]:
        opt = torch.optim.AdamW(trainable, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=0.0)
        losses = []
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            inputs = torch.tensor([row_in] * args.batch, dtype=torch.long).to(device)
            targets = torch.tensor([row_out] * args.batch, dtype=torch.long).to(device)
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = model(input_ids=inputs, use_cache=False).logits
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
            losses.append(loss.item())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, sum(losses) / len(losses)

    _, loss0 = train(1)
    if args.warmup > 0:
        train(args.warmup)
    best = min(train(args.steps)[0] for _ in range(args.repeats))

    step_s = best / args.steps
    tokens = args.batch * args.seq
    tflops = 6.0 * matmul * tokens / step_s / 1e12
    line = (f"client_step impl=peft model={name} params={params} matmul_params={matmul} "
            f"trainable={sum(p.numel() for p in trainable)} batch={args.batch} seq={args.seq} "
            f"rank={args.rank} threads={torch.get_num_threads()} device={args.device} "
            f"loss0={loss0:.4f} ms_per_step={step_s * 1e3:.2f} tokens_per_s={tokens / step_s:.1f} "
            f"model_tflops={tflops:.4f}")
    if args.peak_tflops > 0:
        line += f" mfu={tflops / args.peak_tflops:.4f}"
    line += (f" attn={args.attn} torch={torch.__version__} transformers={transformers.__version__}"
             f" peft={peft.__version__}")
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stories260k",
                        help="stories260k, small, 0.5b; comma-separated for several")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--peak-tflops", type=float, default=0.0)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                        help="transformers' attention implementation")
    parser.add_argument("--assets", type=Path, default=Path("assets"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.model.split(","):
        run_one(name, args)


if __name__ == "__main__":
    main()
