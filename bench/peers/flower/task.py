"""The federated LoRA task of the Flower peer benchmark, in plain PyTorch.

Everything the Flower side needs to do the same work as a fedlora-sim client:
  - the stories260K Llama read from the llama2.c legacy checkpoint (data README section 1a/1c),
  - LoRA (PEFT's initialisation) on q, k, v, o, gate, up and down of every layer,
  - llama2.c's tokenizer (tok512.bin) with run.c's greedy merge order,
  - fedlora's text pipeline: paragraphs, the "contiguous" partitioner, the seeded held-out split
    (std::mt19937_64 reproduced bit for bit) and non-overlapping BOS-prefixed windows,
  - one round of local training exactly as fedlora's TrainLora runs it (AdamW, linear warmup then
    constant, gradient clipping at 1.0, reshuffling the windows every epoch).

Mirrors (C++ -> here): client/data/text_dataset.cc (ReadTextFile, SplitParagraphs,
PartitionParagraphs kContiguous, SplitHeldout, MixSeed, DeterministicShuffle, MakeWindows),
client/model/tokenizer.h (Encode), client/train/sequences.h (WindowSource),
client/train/trainer.cc (TrainLora), client/lora/lora_adapter.h (initialisation).
"""

from __future__ import annotations

import heapq
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BOS = 1
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------
# Model: stories260K (llama2.c legacy layout) with LoRA adapters.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlamaConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads


def read_llama2c_checkpoint(path: Path) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """Reads a llama2.c legacy (v0) checkpoint into HF-style names (layers.<l>.self_attn.q_proj...)."""
    raw = path.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack_from("<7i", raw, 0)
    cfg = LlamaConfig(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq_len, vocab > 0)
    data = np.frombuffer(raw, dtype="<f4", offset=28)
    hs, kv_dim, L = cfg.head_size, n_kv * cfg.head_size, n_layers
    offset = 0

    def take(*shape: int) -> torch.Tensor:
        nonlocal offset
        count = math.prod(shape)
        out = torch.from_numpy(data[offset:offset + count].copy()).reshape(shape)
        offset += count
        return out

    emb = take(cfg.vocab_size, dim)
    rms_att, wq, wk = take(L, dim), take(L, dim, dim), take(L, kv_dim, dim)
    wv, wo, rms_ffn = take(L, kv_dim, dim), take(L, dim, dim), take(L, dim)
    w1, w2, w3 = take(L, hidden, dim), take(L, dim, hidden), take(L, hidden, dim)
    rms_final = take(dim)
    take(seq_len, hs // 2)  # freq_cis_real: recomputed instead (as today's run.c does).
    take(seq_len, hs // 2)  # freq_cis_imag
    weights = {"embed_tokens": emb, "norm": rms_final}
    weights["lm_head"] = emb if cfg.shared_classifier else take(cfg.vocab_size, dim)
    for l in range(L):
        p = f"layers.{l}."
        weights |= {
            p + "input_layernorm": rms_att[l], p + "post_attention_layernorm": rms_ffn[l],
            p + "self_attn.q_proj": wq[l], p + "self_attn.k_proj": wk[l],
            p + "self_attn.v_proj": wv[l], p + "self_attn.o_proj": wo[l],
            p + "mlp.gate_proj": w1[l], p + "mlp.down_proj": w2[l], p + "mlp.up_proj": w3[l],
        }
    if offset != data.size:
        raise ValueError(f"{path}: {data.size - offset} floats left over (not a legacy checkpoint?)")
    return cfg, weights


class LoraLinear(nn.Module):
    """y = W x + (alpha / r) B A x with W frozen; A ~ kaiming_uniform(a=sqrt(5)), B = 0 (PEFT)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        self.register_buffer("weight", weight)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """llama2.c RoPE: rotates INTERLEAVED pairs (x[2j], x[2j+1]) of each head. x: [B, T, H, hs]."""
    pairs = x.unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


class LlamaLora(nn.Module):
    """The stories260K Llama with LoRA on every target module; only lora_A/lora_B train."""

    def __init__(self, cfg: LlamaConfig, weights: dict[str, torch.Tensor], rank: int,
                 alpha: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("embed_tokens", weights["embed_tokens"])
        self.register_buffer("lm_head", weights["lm_head"])
        self.register_buffer("norm", weights["norm"])
        self.layers = nn.ModuleList()
        for l in range(cfg.n_layers):
            p = f"layers.{l}."
            layer = nn.Module()
            layer.register_buffer("input_layernorm", weights[p + "input_layernorm"])
            layer.register_buffer("post_attention_layernorm", weights[p + "post_attention_layernorm"])
            layer.self_attn = nn.ModuleDict({
                name: LoraLinear(weights[p + "self_attn." + name], rank, alpha)
                for name in ("q_proj", "k_proj", "v_proj", "o_proj")})
            layer.mlp = nn.ModuleDict({
                name: LoraLinear(weights[p + "mlp." + name], rank, alpha)
                for name in ("gate_proj", "up_proj", "down_proj")})
            self.layers.append(layer)
        hs = cfg.head_size
        inv_freq = cfg.rope_theta ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
        angles = torch.outer(torch.arange(cfg.seq_len, dtype=torch.float64), inv_freq)
        self.register_buffer("rope_cos", angles.cos().float())  # [seq_len, hs/2]
        self.register_buffer("rope_sin", angles.sin().float())

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable factors only: what a client uploads and the server averages."""
        return {name: p.detach() for name, p in self.named_parameters()}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] int64 -> logits [B, T, vocab]."""
        cfg = self.cfg
        B, T = tokens.shape
        hs, eps = cfg.head_size, cfg.norm_eps
        cos, sin = self.rope_cos[:T, None, :], self.rope_sin[:T, None, :]
        x = F.embedding(tokens, self.embed_tokens)
        for layer in self.layers:
            attn = layer.self_attn
            h = rms_norm(x, layer.input_layernorm, eps)
            q = apply_rope(attn["q_proj"](h).view(B, T, cfg.n_heads, hs), cos, sin)
            k = apply_rope(attn["k_proj"](h).view(B, T, cfg.n_kv_heads, hs), cos, sin)
            v = attn["v_proj"](h).view(B, T, cfg.n_kv_heads, hs)
            group = cfg.n_heads // cfg.n_kv_heads  # Query head h reads kv head h // group.
            k, v = (t.repeat_interleave(group, dim=2) for t in (k, v))
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                 v.transpose(1, 2), is_causal=True)
            x = x + attn["o_proj"](out.transpose(1, 2).reshape(B, T, cfg.dim))
            h = rms_norm(x, layer.post_attention_layernorm, eps)
            mlp = layer.mlp
            x = x + mlp["down_proj"](F.silu(mlp["gate_proj"](h)) * mlp["up_proj"](h))
        return F.linear(rms_norm(x, self.norm, eps), self.lm_head)


def load_model(path: Path, rank: int, alpha: float) -> LlamaLora:
    cfg, weights = read_llama2c_checkpoint(path)
    return LlamaLora(cfg, weights, rank, alpha)


# --------------------------------------------------------------------------------------------
# Tokenizer: llama2.c tok512.bin, encoding like run.c's encode().
# --------------------------------------------------------------------------------------------


class Tokenizer:
    """llama2.c's tokenizer. Same merges as run.c (highest score first, leftmost on ties), found
    with a heap and lazy invalidation instead of run.c's O(n^2) rescans (as fedlora does)."""

    def __init__(self, path: Path, vocab_size: int) -> None:
        raw = path.read_bytes()
        offset = 4  # int32 max_token_length: not needed.
        self.pieces: list[bytes] = []
        self.scores: list[float] = []
        for _ in range(vocab_size):
            score, length = struct.unpack_from("<fi", raw, offset)
            offset += 8
            self.pieces.append(raw[offset:offset + length])
            self.scores.append(score)
            offset += length
        self.ids: dict[bytes, int] = {}
        for i, piece in enumerate(self.pieces):
            self.ids.setdefault(piece, i)

    def encode(self, text: bytes, bos: bool) -> list[int]:
        """Optional BOS, the dummy prefix " " (for non-empty text), code points or byte fallback,
        then greedy merges. No EOS (fedlora encodes training text without one)."""
        syms: list[int] = [BOS] if bos else []
        if text:
            syms.append(self.ids[b" "])
        i = 0
        while i < len(text):
            j = i + 1
            while j < len(text) and j - i < 4 and (text[j] & 0xC0) == 0x80:
                j += 1  # A lead byte plus up to 3 continuation bytes, as run.c groups them.
            piece = text[i:j]
            if piece in self.ids:
                syms.append(self.ids[piece])
            else:
                syms.extend(b + 3 for b in piece)  # Byte-fallback tokens <0xHH> = byte + 3.
            i = j

        n = len(syms)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap: list[tuple[float, int, int, int, int]] = []

        def push(left: int) -> None:
            right = nxt[left]
            if right < n:
                merged = self.ids.get(self.pieces[syms[left]] + self.pieces[syms[right]])
                if merged is not None:
                    heapq.heappush(heap, (-self.scores[merged], left, syms[left], syms[right], merged))

        for k in range(n - 1):
            push(k)
        while heap:
            _, left, left_id, right_id, merged = heapq.heappop(heap)
            right = nxt[left]
            if not alive[left] or syms[left] != left_id or right >= n or syms[right] != right_id:
                continue  # Stale: one of the two symbols has merged since.
            syms[left] = merged
            alive[right] = False
            nxt[left] = nxt[right]
            if nxt[right] < n:
                prv[nxt[right]] = left
            if prv[left] >= 0:
                push(prv[left])
            push(left)
        return [s for k, s in enumerate(syms) if alive[k]]


# --------------------------------------------------------------------------------------------
# Data: fedlora's text pipeline (client/data/text_dataset.cc).
# --------------------------------------------------------------------------------------------


class Mt19937_64:
    """std::mt19937_64, bit for bit (fedlora seeds its shuffles with it)."""

    def __init__(self, seed: int) -> None:
        self.mt = [seed & MASK64]
        for i in range(1, 312):
            prev = self.mt[-1]
            self.mt.append((6364136223846793005 * (prev ^ (prev >> 62)) + i) & MASK64)
        self.index = 312

    def _twist(self) -> None:
        mt = self.mt
        for i in range(312):
            y = (mt[i] & 0xFFFFFFFF80000000) | (mt[(i + 1) % 312] & 0x7FFFFFFF)
            mt[i] = mt[(i + 156) % 312] ^ (y >> 1) ^ (0xB5026F5AA96619E9 if y & 1 else 0)
        self.index = 0

    def __call__(self) -> int:
        if self.index >= 312:
            self._twist()
        y = self.mt[self.index]
        self.index += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        return y ^ (y >> 43)


def mix_seed(a: int, b: int) -> int:
    """fedlora's MixSeed: splitmix64's finalizer over a + golden * (b + 1)."""
    z = (a + 0x9E3779B97F4A7C15 * (b + 1)) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def deterministic_shuffle(values: list[int], rng: Mt19937_64) -> None:
    """fedlora's DeterministicShuffle: Fisher-Yates from the back with unbiased UniformBelow."""
    for i in range(len(values), 1, -1):
        limit = MASK64 - (MASK64 % i)
        x = rng()
        while x >= limit:
            x = rng()
        j = x % i
        values[i - 1], values[j] = values[j], values[i - 1]


def split_paragraphs(text: bytes) -> list[bytes]:
    """Maximal runs of non-blank lines (blank = only spaces, tabs, CRs), joined by '\\n'."""
    paragraphs: list[bytes] = []
    current: list[bytes] = []
    for line in text.split(b"\n"):
        if line.strip(b" \t\r"):
            current.append(line)
        elif current:
            paragraphs.append(b"\n".join(current))
            current = []
    if current:
        paragraphs.append(b"\n".join(current))
    return paragraphs


def contiguous_partition(paragraphs: list[bytes], parts: int) -> list[list[int]]:
    """Paragraph i goes to the part its character midpoint falls in (boundaries at k*total/parts)."""
    total = sum(len(p) for p in paragraphs)
    out: list[list[int]] = [[] for _ in range(parts)]
    start = 0
    for i, p in enumerate(paragraphs):
        mid2 = 2 * start + len(p)
        out[0 if total == 0 else min(parts - 1, mid2 * parts // (2 * total))].append(i)
        start += len(p)
    return out


def split_heldout(mine: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """fedlora's SplitHeldout: (train, heldout) paragraph indices, each sorted."""
    n = len(mine)
    held = int(math.floor(fraction * n + 0.5))  # std::llround (fraction * n >= 0).
    if fraction > 0.0 and n >= 2:
        held = min(max(held, 1), n - 1)
    if n <= 1:
        held = 0
    order = list(mine)
    deterministic_shuffle(order, Mt19937_64(seed))
    return sorted(order[held:]), sorted(order[:held])


def read_text(path: Path) -> bytes:
    return path.read_bytes().replace(b"\r\n", b"\n")  # ReadTextFile drops the CR of each CRLF.


def client_train_stream(text: bytes, tokenizer: Tokenizer, num_clients: int, index: int,
                        heldout_fraction: float, partition_seed: int) -> list[int]:
    """Client `index`'s training token stream, as fedlora's LoadClientData builds it."""
    paragraphs = split_paragraphs(text)
    mine = contiguous_partition(paragraphs, num_clients)[index]
    if not mine:
        raise ValueError(f"partition {index} of {num_clients} is empty (use fewer clients)")
    train, _ = split_heldout(mine, heldout_fraction, mix_seed(partition_seed, index))
    return tokenizer.encode(b"\n\n".join(paragraphs[i] for i in train), bos=False)


def make_windows(stream: list[int], seq_len: int) -> torch.Tensor:
    """[num_windows, seq_len] non-overlapping windows (MakeWindows; a short stream is one window,
    which we then require to be full length to keep batches rectangular)."""
    count = len(stream) // seq_len
    if count == 0:
        raise ValueError(f"{len(stream)} training tokens: fewer than seq_len {seq_len}")
    return torch.tensor(stream[:count * seq_len], dtype=torch.int64).view(count, seq_len)


# --------------------------------------------------------------------------------------------
# Local training: fedlora's TrainLora.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSpec:
    learning_rate: float = 3e-3
    warmup_steps: int = 5
    local_steps: int = 10
    batch_size: int = 8
    grad_clip: float = 1.0
    weight_decay: float = 0.0


def batch_loss(model: LlamaLora, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of windows w: inputs [BOS, w0..w_{T-2}], targets [w0..w_{T-1}]."""
    bos = torch.full((windows.shape[0], 1), BOS, dtype=torch.int64)
    logits = model(torch.cat((bos, windows[:, :-1]), dim=1))
    return F.cross_entropy(logits.flatten(0, 1), windows.flatten())


def train_lora(model: LlamaLora, windows: torch.Tensor, spec: TrainSpec, seed: int) -> float:
    """local_steps AdamW steps on batches of a per-epoch shuffle; returns the mean loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=spec.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.int64)
    cursor, loss_sum = 0, 0.0
    for step in range(spec.local_steps):
        if cursor == len(order):
            order, cursor = torch.randperm(len(windows), generator=generator), 0
        picks = order[cursor:cursor + spec.batch_size]
        cursor += len(picks)
        lr = spec.learning_rate
        if step < spec.warmup_steps:
            lr *= (step + 1) / spec.warmup_steps
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        loss = batch_loss(model, windows[picks])
        loss.backward()
        if spec.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        optimizer.step()
        loss_sum += loss.item()
    return loss_sum / spec.local_steps
