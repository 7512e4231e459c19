#!/usr/bin/env python3
"""make_tokenizer_fixtures.py — small tokenizers and golden encodings for the C++ tokenizer tests.

Trains small tokenizers (vocabularies of 300-1000 pieces) on tinyshakespeare with the reference
Python libraries and writes them, with the ids those libraries produce for a list of test strings,
under tests/data/tokenizers/. The C++ HfTokenizer and SentencePieceTokenizer must reproduce every
id and every decoded string exactly (tests/client_data/hf_tokenizer_test.cc, sp_tokenizer_test.cc).

Not a build dependency: the generated files are kept in the tree. To regenerate:

    python3 -m venv /tmp/tokvenv && /tmp/tokvenv/bin/pip install tokenizers sentencepiece
    /tmp/tokvenv/bin/python scripts/make_tokenizer_fixtures.py

Fixtures (one directory each, so a tokenizer_config.json can sit beside its tokenizer.json):
  llama3/            byte-level BPE, Llama 3 split regex, ignore_merges, special tokens appended
                     after the vocabulary, post_processor Sequence[ByteLevel, TemplateProcessing
                     adding <|begin_of_text|>]; tokenizer_config.json with {"content": ...} objects.
  qwen2/             byte-level BPE, NFC normalizer, Qwen2 split regex, no BOS, non-special added
                     tokens (one normalized); tokenizer_config.json with eos "<|endoftext|>".
  gpt2/              ByteLevel pre-tokenizer with its built-in regex, merges as "a b" strings,
                     <|endoftext|>, a RoBERTa-like lstrip <mask>, an rstrip and a single_word token.
  gpt2_prefix_space/ the gpt2 vocabulary with ByteLevel(add_prefix_space=true).
  smollm/            the gpt2 vocabulary behind SmolLM's Sequence[Digits, ByteLevel].
  llama2/            SentencePiece BPE with byte_fallback converted like transformers' LlamaConverter:
                     Sequence[Prepend("▁"), Replace(" ", "▁")] normalizer, byte-fallback decoder.
  llama2_metaspace/  the llama2 model behind the legacy Metaspace pre-tokenizer (prepend_scheme
                     first, split) and no normalizer.
  llama2_metaspace_always/  legacy Metaspace with add_prefix_space (no prepend_scheme), no split,
                     and a Metaspace decoder.
  llama2_bos_eos/    the llama2 model with a template adding <s> ... </s>.
  gpt2_roberta/      the gpt2 model with RobertaProcessing.
  wordish/           a BPE with continuing_subword_prefix "##", end_of_word_suffix "</w>" and an
                     unknown token (no byte fallback): NFKC + Strip normalizers, Split with
                     behavior Removed and a \w regex, Digits (contiguous), no decoder.
  behaviors/         the wordish model behind Split behaviors MergedWithNext, MergedWithPrevious,
                     Contiguous with invert.
  sp/tokenizer.model the SentencePiece model llama2/ was converted from (BPE, byte_fallback).

Regenerating reproduces every file byte for byte except wordish/ and behaviors/ (and so
golden.json): the tokenizers trainer walks a hash map when it builds the "##" alphabet, so their
ids and merge ranks change from run to run. The tests only need the files and golden.json to come
from the same run.

The tokenizers are trained on tinyshakespeare plus a short multilingual text repeated a few times,
so that merges also join multi-byte characters.

golden.json: "strings" (the test strings) and, per fixture, parallel lists "ids" (no special
tokens) and "decoded" (decode(ids with special tokens) skipping special tokens), the "prefix" and
"suffix" ids that add_special_tokens=True (add_bos=True for SentencePiece) puts around every
string (checked here for every string), and the full-corpus id count and FNV-1a 64 of the ids
(each as 4 little-endian bytes).
"""

import hashlib
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "assets" / "datasets" / "tinyshakespeare" / "input.txt"
OUT = ROOT / "tests" / "data" / "tokenizers"

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Every fixture encodes every string; special tokens of other families are plain text there.
TEST_STRINGS = [
    "",
    "Hello, world!",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
    "ROMEO: I'm sure you're right; we've THEY'LL it's O'er-Hasty, DON'T!",
    "  leading and trailing spaces  ",
    "multiple   spaces\tand\ttabs\t\there\n\n\nnewlines\r\nwindows\r\n",
    " ",
    "   ",
    "\n",
    " \n \n\t",
    "1234567 and 3.14159 and 1,000,000 and 42nd",
    "中文测试：你好，世界！",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم",
    "Café naïve résumé Zoë façade coöperate",
    "Cafe\u0301 nai\u0308ve re\u0301sume\u0301",  # decomposed (NFC changes it)
    "I \u2764\ufe0f \U0001F917! \U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466 "
    "\U0001F1EB\U0001F1F7 \U0001F3F3\ufe0f\u200d\U0001F308 \U0001F44D\U0001F3FD",
    "こんにちは世界 안녕하세요 Γειά σου Κόσμε",
    "\u00a0nbsp\u3000ideographic\u2009thin\u0085nel\u2028ls",
    "a\x00b\x01c\x7fd",
    "x=1;y=2;print(x+y)  # code\n\tif a:\n\t\treturn b\n",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "<|begin_of_text|>Hello<|end_of_text|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|endoftext|>The end.<|endoftext|>",
    "<s>[INST] What is love? [/INST] Baby don't hurt me</s>",
    "text with <unk> inside and <s> and </s>",
    "<think>hmm</think> answer",
    "Let me think: <think>\nmaybe</think>",
    "Fill the <mask> here and  <mask>  there.<mask>",
    "<sep>   after sep<sep>\n",
    "Romeo, Romeo! wherefore art thou Romeo? Romeos RomeoRomeo _Romeo Romeo_",
    "the café and the cafe\u0301 and the Café",
    "<|begin_of_text|><|begin_of_text|>",
    "<|im_end|>",
    "▁already▁has▁metaspace ▁ x",
    "<0x41> <0xZZ> <0x41",
    "It'S 'ſ \u212aelvin IT'S we'Re",
    "nel\u0085 \u0085 x \u0085\u0085y\n\u0085",
    "\n\n\n   \n  x   ",
    "12345678901234567890 ٣٤٥ ²³ Ⅻ",
    "नमस्ते दुनिया สวัสดีชาวโลก ǅemal ﬁne",
    "Hi <|im_end|> there <|im_start|>",
    "<mask>start x<mask> Romeo",
    "ﾊﾝｶｸ ＡＢＣ①",
    "mvs\u180e'd zwsp\u200b'll x\u180e\u180e y",  # U+180E is no longer White_Space.
]

# Added to the training text (a few times) so merges also join multi-byte characters.
MULTILINGUAL = """\
我们今天学习中文。你好，世界！这是一个测试。中文的标点符号：，。！？
Привет, как дела? Мир прекрасен. Москва — столица России.
مرحبا بالعالم. كيف حالك اليوم؟
Καλημέρα κόσμε! Γειά σου.
こんにちは世界。今日はいい天気ですね。
안녕하세요 세계. 오늘 날씨가 좋네요.
Café, naïve, résumé, Zoë, façade, über, straße, œuvre.
I ❤️ 🤗! 👍🏽 🇫🇷 🇩🇪 🏳️‍🌈 👨‍👩‍👧‍👦
"""

CORPUS_LIMIT = None  # Encode the whole corpus for the hash.


def fnv1a64(ids):
    h = 0xCBF29CE484222325
    for i in ids:
        for b in struct.pack("<i", i):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=None, separators=(",", ":")) + "\n",
                    encoding="utf-8")


def training_files():
    """tinyshakespeare plus MULTILINGUAL repeated, as one temporary file."""
    path = Path(tempfile.gettempdir()) / "fedlora_tokenizer_training.txt"
    path.write_text(CORPUS.read_text(encoding="utf-8") + "\n" + MULTILINGUAL * 30, encoding="utf-8")
    return [str(path)]


def train_byte_level(pre_tokenizer, normalizer, vocab_size):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(training_files(), trainer)
    return tok


def added(id_, content, special, normalized=False, lstrip=False, rstrip=False, single_word=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": normalized, "special": special}


def template(bos_token, bos_id):
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos_token, "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos_token, "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos_token, "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos_token: {"id": bos_token, "ids": [bos_id], "tokens": [bos_token]}},
    }


def make_llama3():
    split = pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False)
    tok = train_byte_level(pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), None, 1000)
    j = json.loads(tok.to_str())
    n = len(j["model"]["vocab"])
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
    j["added_tokens"] = [added(n + i, s, True) for i, s in enumerate(specials)]
    j["model"]["ignore_merges"] = True
    j["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        template("<|begin_of_text|>", n)]}
    config = {"bos_token": {"content": "<|begin_of_text|>", "lstrip": False, "normalized": False,
                            "rstrip": False, "single_word": False, "special": True},
              "eos_token": {"content": "<|end_of_text|>", "lstrip": False, "normalized": False,
                            "rstrip": False, "single_word": False, "special": True},
              "tokenizer_class": "PreTrainedTokenizerFast"}
    return j, config


def make_qwen2():
    split = pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False)
    tok = train_byte_level(pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        normalizers.NFC(), 800)
    j = json.loads(tok.to_str())
    n = len(j["model"]["vocab"])
    j["added_tokens"] = [added(n, "<|endoftext|>", True), added(n + 1, "<|im_start|>", True),
                         added(n + 2, "<|im_end|>", True), added(n + 3, "<think>", False),
                         added(n + 4, "</think>", False),
                         # A normalized added token: matched after NFC, so "cafe\u0301" finds it.
                         added(n + 5, "café", False, normalized=True)]
    j["model"]["ignore_merges"] = False
    j["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False}
    j["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False}
    config = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "tokenizer_class": "Qwen2Tokenizer"}
    return j, config


def make_gpt2():
    tok = train_byte_level(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                           None, 600)
    j = json.loads(tok.to_str())
    n = len(j["model"]["vocab"])
    j["added_tokens"] = [added(n, "<|endoftext|>", True, normalized=True),
                         added(n + 1, "<mask>", True, lstrip=True),
                         added(n + 2, "<sep>", True, rstrip=True),
                         added(n + 3, "Romeo", False, single_word=True)]
    j["model"]["merges"] = [f"{a} {b}" for a, b in j["model"]["merges"]]  # The legacy format.
    j["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True}
    j["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True}
    return j


def make_gpt2_variants(gpt2):
    prefix = json.loads(json.dumps(gpt2))
    prefix["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True,
                               "trim_offsets": True, "use_regex": True}
    smollm = json.loads(json.dumps(gpt2))
    smollm["added_tokens"] = smollm["added_tokens"][:1]
    smollm["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    return prefix, smollm


def train_sentencepiece(model_path):
    # Llama 2's settings (identity normalization, no whitespace cleanup, digits split, byte
    # fallback), scaled down.
    prefix = str(model_path)[: -len(".model")]
    spm.SentencePieceTrainer.train(
        input=training_files()[0], model_prefix=prefix, model_type="bpe", vocab_size=1000,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        max_sentence_length=1 << 16, minloglevel=2)
    os.remove(prefix + ".vocab")
    return spm.SentencePieceProcessor(model_file=str(model_path))


def llama_converter(sp):
    """tokenizer.json for a SentencePiece BPE model, as transformers' LlamaConverter writes it."""
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    merges = []
    for merge, score in scores.items():  # SentencePieceExtractor.extract
        local = [(merge[:k], merge[k:], score) for k in range(1, len(merge))
                 if merge[:k] in vocab and merge[k:] in vocab]
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda x: x[2], reverse=True)
    j = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(0, "<unk>", True), added(1, "<s>", True), added(2, "</s>", True)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": template("<s>", 1),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
                  "merges": [[a, b] for a, b, _ in merges]},
    }
    metaspace = json.loads(json.dumps(j))
    metaspace["normalizer"] = None
    metaspace["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁",
                                  "prepend_scheme": "first", "split": True}
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
              "add_eos_token": False, "tokenizer_class": "LlamaTokenizer"}
    return j, metaspace, config


def make_wordish():
    tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##",
                               end_of_word_suffix="</w>", fuse_unk=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+"), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=False)])
    trainer = trainers.BpeTrainer(vocab_size=700, show_progress=False, special_tokens=["[UNK]"],
                                  continuing_subword_prefix="##", end_of_word_suffix="</w>")
    tok.train(training_files(), trainer)
    j = json.loads(tok.to_str())
    behaviors = json.loads(json.dumps(j))
    behaviors["normalizer"] = None
    behaviors["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext", "invert": False},
        {"type": "Split", "pattern": {"Regex": r"\p{P}"}, "behavior": "MergedWithPrevious",
         "invert": False},
        {"type": "Split", "pattern": {"Regex": "[aeiou]"}, "behavior": "Contiguous",
         "invert": True}]}
    behaviors["model"]["fuse_unk"] = True
    return j, behaviors


def make_post_processor_variants(llama2, gpt2):
    bos_eos = json.loads(json.dumps(llama2))
    bos_eos["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "</s>", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                           "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}
    roberta = json.loads(json.dumps(gpt2))
    eot = roberta["added_tokens"][0]["id"]
    roberta["post_processor"] = {"type": "RobertaProcessing", "sep": ["<|endoftext|>", eot],
                                 "cls": ["<|endoftext|>", eot], "trim_offsets": True,
                                 "add_prefix_space": False}
    always = json.loads(json.dumps(llama2))
    always["normalizer"] = None
    always["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}
    always["pre_tokenizer"]["split"] = False
    always["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"},
        {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}]}
    return bos_eos, roberta, always


def sp_encode(sp, text):
    """SentencePiece ids of `text`, with control and unknown pieces written in the text split out
    first (longest match, leftmost), as transformers' slow Llama tokenizer does; this is the rule
    SentencePieceTokenizer::Encode documents."""
    specials = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())
                if (sp.is_control(i) or sp.is_unknown(i)) and sp.id_to_piece(i)}
    ids, start, i = [], 0, 0
    while i < len(text):
        best = None
        for piece, pid in specials.items():
            if text.startswith(piece, i) and (best is None or len(piece) > len(best[0])):
                best = (piece, pid)
        if best is None:
            i += 1
            continue
        if start < i:
            ids += sp.encode(text[start:i])
        ids.append(best[1])
        i += len(best[0])
        start = i
    if start < len(text):
        ids += sp.encode(text[start:])
    return ids


def golden_entry(name, path, kind, vocab_size, corpus_ids, encode, decode):
    entry = {"path": path, "kind": kind, "vocab_size": vocab_size,
             "corpus": {"num_ids": len(corpus_ids), "fnv1a64": f"{fnv1a64(corpus_ids):016x}"},
             "prefix": None, "suffix": None, "ids": [], "decoded": []}
    # The special tokens around the first non-empty encoding; every string must show the same.
    for text in TEST_STRINGS:
        plain, special = encode(text, False), encode(text, True)
        if plain:
            at = next(i for i in range(len(special)) if special[i:i + len(plain)] == plain)
            entry["prefix"], entry["suffix"] = special[:at], special[at + len(plain):]
            break
    for text in TEST_STRINGS:
        plain, special = encode(text, False), encode(text, True)
        if special != entry["prefix"] + plain + entry["suffix"]:
            raise SystemExit(f"{name}: special tokens around {text!r} differ from the others")
        entry["ids"].append(plain)
        entry["decoded"].append(decode(special))
    return entry


def main():
    print(f"tokenizers {tokenizers.__version__}, sentencepiece {spm.__version__}")
    corpus = CORPUS.read_text(encoding="utf-8")
    golden = {"generator": {"tokenizers": tokenizers.__version__,
                            "sentencepiece": spm.__version__,
                            "script": "scripts/make_tokenizer_fixtures.py"},
              "strings": TEST_STRINGS, "fixtures": {}}

    llama3, llama3_config = make_llama3()
    qwen2, qwen2_config = make_qwen2()
    gpt2 = make_gpt2()
    gpt2_prefix, smollm = make_gpt2_variants(gpt2)
    (OUT / "sp").mkdir(parents=True, exist_ok=True)
    sp = train_sentencepiece(OUT / "sp" / "tokenizer.model")
    llama2, llama2_metaspace, llama2_config = llama_converter(sp)
    llama2_bos_eos, gpt2_roberta, llama2_always = make_post_processor_variants(llama2, gpt2)
    wordish, behaviors = make_wordish()

    hf = {"llama3": (llama3, llama3_config), "qwen2": (qwen2, qwen2_config), "gpt2": (gpt2, None),
          "gpt2_prefix_space": (gpt2_prefix, None), "smollm": (smollm, None),
          "gpt2_roberta": (gpt2_roberta, None), "llama2": (llama2, llama2_config),
          "llama2_metaspace": (llama2_metaspace, None),
          "llama2_metaspace_always": (llama2_always, None), "llama2_bos_eos": (llama2_bos_eos, None),
          "wordish": (wordish, None), "behaviors": (behaviors, None)}
    for name, (j, config) in hf.items():
        write_json(OUT / name / "tokenizer.json", j)
        if config is not None:
            write_json(OUT / name / "tokenizer_config.json", config)
        tok = Tokenizer.from_file(str(OUT / name / "tokenizer.json"))
        golden["fixtures"][name] = golden_entry(
            name, f"{name}/tokenizer.json", "hf", tok.get_vocab_size(with_added_tokens=True),
            tok.encode(corpus, add_special_tokens=False).ids,
            lambda text, special: tok.encode(text, add_special_tokens=special).ids,
            lambda ids: tok.decode(ids, skip_special_tokens=True))
        print(f"{name}: {golden['fixtures'][name]['vocab_size']} ids, "
              f"corpus {golden['fixtures'][name]['corpus']['num_ids']} ids")

    golden["fixtures"]["sp"] = golden_entry(
        "sp", "sp/tokenizer.model", "sentencepiece", sp.get_piece_size(), sp.encode(corpus),
        lambda text, special: ([sp.bos_id()] if special else []) + sp_encode(sp, text),
        sp.decode)
    agree = sum(a == b for a, b in zip(golden["fixtures"]["sp"]["ids"],
                                       golden["fixtures"]["llama2"]["ids"]))
    print(f"sp: corpus {golden['fixtures']['sp']['corpus']['num_ids']} ids; the converted llama2 "
          f"tokenizer.json agrees with it on {agree}/{len(TEST_STRINGS)} strings")
    write_json(OUT / "golden.json", golden)
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(ROOT)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    sys.exit(main())
