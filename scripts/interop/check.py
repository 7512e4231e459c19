#!/usr/bin/env python3
"""Interoperability checks between fedlora and the Hugging Face stack (scripts/interop.sh).

Builds a small random Llama (Llama 3 style: GQA, rope_theta 500000, llama3 rope scaling, untied
lm_head) and a small random Qwen2 (q/k/v biases, tied embeddings, NFC tokenizer without BOS) with
transformers, each with a real byte-level BPE tokenizer.json trained by the tokenizers library,
saves them in HF format, and checks:

  (a) fedlora's logits equal transformers' (max abs diff <= 1e-4, fp32), also for a bf16 copy
      saved in shards (fedlora upcasts bf16 to fp32, as does transformers' .float());
  (b) fedlora's token ids equal transformers' on a multilingual sample with emoji and digits;
  (c) adapters fedlora exports (the coordinator's PEFT export after a real federated run, FedAvg
      and FedEx with base corrections folded in) load with PeftModel.from_pretrained and give
      fedlora's logits (<= 1e-4);
  (d) a PEFT-saved adapter imports into fedlora and gives PEFT's logits (<= 1e-4);
  plus (e) a merged model exported by fedlora loads in transformers and gives PEFT's logits.

Prints one line per check and exits non-zero if any fails.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

TOL = 1e-4
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                  r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

MULTILINGUAL = [
    "Hello, world! It's 2026 and we've got 1234567 tokens.",
    "Zürich, naïve café — déjà vu. Ελληνικά. Русский текст. العربية. עברית.",
    "中文分词测试：机器学习很有趣。日本語のテキスト。한국어 문장.",
    "Emoji: 😀👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 and ❤️ 12.5% of 3,000,000",
    "  leading spaces,\ttabs\tand\nnew\n\nlines   trailing   ",
    "numbers 0 00 000 0000 3.14159 -42 1e-10",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
]

results = []


def report(name, ok, detail):
    results.append(ok)
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.stderr.write(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
        raise SystemExit(2)
    return proc.stdout


def train_tokenizer(corpus, pattern, nfc, bos, specials, out_dir):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=1000, special_tokens=specials,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([corpus], trainer)
    if bos:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=specials[1],
                                   pad_token=specials[1])
    fast.save_pretrained(out_dir)
    return fast


def randomize_(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def build_models(root, corpus):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    specs = {}
    # Llama 3 style.
    d = os.path.join(root, "llama")
    tok = train_tokenizer(corpus, LLAMA3_PATTERN, False, "<|begin_of_text|>",
                          ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"], d)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=172,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, rope_theta=500000.0, rms_norm_eps=1e-5,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    randomize_(model, 1)
    model.save_pretrained(d, safe_serialization=True)
    specs["llama"] = d
    # The same weights in bf16, sharded.
    d16 = os.path.join(root, "llama-bf16-sharded")
    model.to(torch.bfloat16).save_pretrained(d16, safe_serialization=True, max_shard_size="100KB")
    tok.save_pretrained(d16)
    specs["llama-bf16-sharded"] = d16
    # Qwen2: biases, tied embeddings, NFC, no BOS.
    d = os.path.join(root, "qwen2")
    tok = train_tokenizer(corpus, QWEN2_PATTERN, True, None,
                          ["<|endoftext|>", "<|im_end|>", "<|im_start|>"], d)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=160,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, rope_theta=1000000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, use_sliding_window=False)
    model = Qwen2ForCausalLM(cfg).eval()
    randomize_(model, 2)
    model.save_pretrained(d, safe_serialization=True)
    specs["qwen2"] = d
    return specs


def load_hf(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).float().eval()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float()


def our_logits(bin_dir, work, model_dir, ids, adapter=None):
    ids_file = os.path.join(work, "ids.json")
    out = os.path.join(work, "logits.safetensors")
    with open(ids_file, "w") as f:
        json.dump(ids, f)
    cmd = [os.path.join(bin_dir, "fedlora-client"), "logits", "--model", model_dir,
           "--ids", ids_file, "--out", out]
    if adapter:
        cmd += ["--adapter", adapter]
    run(cmd)
    return load_file(out)["logits"].float()


def sample_ids(tok_dir, n_rows=3, length=40):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    text = " ".join(MULTILINGUAL)
    ids = tok(text, add_special_tokens=True)["input_ids"]
    return [ids[i * 7: i * 7 + length] for i in range(n_rows)]


def check_logits(bin_dir, work, specs):
    for name in ["llama", "qwen2", "llama-bf16-sharded"]:
        d = specs[name]
        ids = sample_ids(d)
        ref = hf_logits(load_hf(d, torch.bfloat16 if "bf16" in name else torch.float32), ids)
        ours = our_logits(bin_dir, work, d, ids)
        diff = (ref - ours).abs().max().item()
        report(f"(a) logits {name}", diff <= TOL, f"max |diff| = {diff:.2e} over {tuple(ref.shape)}")


def check_tokens(bin_dir, work, specs):
    from transformers import AutoTokenizer
    for name in ["llama", "qwen2"]:
        d = specs[name]
        tok = AutoTokenizer.from_pretrained(d)
        bad = []
        for add_special in (True, False):
            for text in MULTILINGUAL:
                text_file = os.path.join(work, "text.txt")
                with open(text_file, "w", encoding="utf-8") as f:
                    f.write(text)
                cmd = [os.path.join(bin_dir, "fedlora-client"), "tokenize", "--tokenizer", d,
                       "--text-file", text_file]
                if not add_special:
                    cmd.append("--no-special")
                ours = json.loads(run(cmd))
                want = tok(text, add_special_tokens=add_special)["input_ids"]
                if ours["ids"] != want:
                    bad.append((text[:30], add_special, want[:12], ours["ids"][:12]))
                elif ours["decoded"] != tok.decode(want, skip_special_tokens=True):
                    bad.append((text[:30], "decode", tok.decode(want, skip_special_tokens=True),
                                ours["decoded"]))
        report(f"(b) token ids {name}", not bad,
               f"{2 * len(MULTILINGUAL)} texts" + (f"; first mismatch {bad[0]}" if bad else " identical"))


def write_sim_config(path, model_dir, corpus, strategy):
    with open(path, "w") as f:
        f.write(f"""num_clients: 3
threads: 2
log_level: warn
coordinator:
  rounds: 2
  seed: 7
  round: {{fraction: 1.0, min_clients: 3, quorum: 3, timeout_ms: 600000}}
  eval: {{enabled: false}}
  strategy: {{name: {strategy}}}
  lora: {{rank: 4, alpha: 8, dropout: 0.0, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}}
  train: {{learning_rate: 0.01, local_steps: 5, batch_size: 4, seq_len: 64}}
  export: {{peft_every_round: true, base_model_name_or_path: {model_dir}}}
client:
  model: {{path: {model_dir}}}
  data: {{path: {corpus}, partition: iid, partition_seed: 3, heldout_fraction: 0.1}}
""")


def peft_logits(model_dir, adapter_dir, ids):
    from peft import PeftModel
    base = load_hf(model_dir)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    return hf_logits(model, ids)


def check_exported_adapters(bin_dir, work, specs, corpus):
    d = specs["llama"]
    ids = sample_ids(d)
    for strategy in ["fedavg", "fedex"]:
        cfg = os.path.join(work, f"sim-{strategy}.yaml")
        out = os.path.join(work, f"sim-{strategy}")
        write_sim_config(cfg, d, corpus, strategy)
        run([os.path.join(bin_dir, "fedlora-sim"), "--config", cfg, "--out", out])
        adapter = os.path.join(out, "peft")
        with open(os.path.join(adapter, "adapter_config.json")) as f:
            r = json.load(f)["r"]
        ref = peft_logits(d, adapter, ids)
        ours = our_logits(bin_dir, work, d, ids, adapter)
        base = hf_logits(load_hf(d), ids)
        diff = (ref - ours).abs().max().item()
        moved = (ref - base).abs().max().item()
        report(f"(c) exported adapter {strategy}", diff <= TOL and moved > 1e-3,
               f"PeftModel.from_pretrained ok, r={r}, max |diff| = {diff:.2e} "
               f"(adapter moves logits by {moved:.2e})")


def check_imported_adapter(bin_dir, work, specs):
    from peft import LoraConfig, get_peft_model
    for name in ["llama", "qwen2"]:
        d = specs[name]
        ids = sample_ids(d)
        torch.manual_seed(5)
        base = load_hf(d)
        config = LoraConfig(r=6, lora_alpha=12, target_modules=["q_proj", "v_proj", "down_proj", "gate_proj"],
                            init_lora_weights=False, use_rslora=(name == "qwen2"),
                            rank_pattern={"down_proj": 3}, lora_dropout=0.0)
        model = get_peft_model(base, config).eval()
        adapter = os.path.join(work, f"peft-{name}")
        model.save_pretrained(adapter)
        ref = hf_logits(model, ids)
        ours = our_logits(bin_dir, work, d, ids, adapter)
        diff = (ref - ours).abs().max().item()
        report(f"(d) PEFT adapter into fedlora {name}", diff <= TOL,
               f"r=6 (down_proj 3){', rsLoRA' if name == 'qwen2' else ''}: max |diff| = {diff:.2e}")
        if name == "llama":
            merged = os.path.join(work, "merged-llama")
            run([os.path.join(bin_dir, "fedlora-client"), "export-merged", "--model", d,
                 "--adapter", adapter, "--out", merged])
            got = hf_logits(load_hf(merged), ids)
            diff = (ref - got).abs().max().item()
            report("(e) merged model in transformers", diff <= TOL, f"max |diff| = {diff:.2e}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="directory with fedlora-client and fedlora-sim")
    parser.add_argument("--corpus", required=True, help="tinyshakespeare input.txt")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    args.bin = os.path.abspath(args.bin)
    args.corpus = os.path.abspath(args.corpus)  # The sim resolves paths against its config.
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="fedlora-interop-"))
    os.makedirs(work, exist_ok=True)
    import transformers, peft, tokenizers as tk
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"tokenizers {tk.__version__}; work dir {work}", flush=True)
    specs = build_models(os.path.join(work, "models"), args.corpus)
    check_logits(args.bin, work, specs)
    check_tokens(args.bin, work, specs)
    check_exported_adapters(args.bin, work, specs, args.corpus)
    check_imported_adapter(args.bin, work, specs)
    print(f"{sum(results)}/{len(results)} checks passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
