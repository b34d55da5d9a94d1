"""Fixtures: tiny text backbones and data built here, so the suite runs offline and fast.

- ``tiny_bert`` / ``tiny_distilbert``: 2- and 3-layer encoders (random weights) saved as local
  Hugging Face folders, sharing one WordPiece vocabulary trained on the fixture corpus.
- ``sentiment_dir``: a learnable sentiment corpus (word cues) with 12% label noise, so trials
  differ in quality and ASHA has something to stop.
"""

from __future__ import annotations

import os
import random
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # test clusters are private to the test run
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

POSITIVE = ["good", "great", "excellent", "wonderful", "fun", "lovely", "brilliant", "superb", "moving", "charming"]
NEGATIVE = ["bad", "awful", "boring", "terrible", "dull", "poor", "weak", "horrible", "tedious", "bland"]
FILLER = ["the", "movie", "film", "was", "plot", "acting", "story", "really", "quite", "a", "and", "with",
          "very", "it", "cast", "script", "scenes", "ending", "overall", "honestly"]


def make_sentences(n: int, seed: int, noise: float = 0.12) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        cues = POSITIVE if label == "positive" else NEGATIVE
        words = rng.choices(FILLER, k=rng.randint(3, 8)) + rng.choices(cues, k=rng.randint(2, 3))
        rng.shuffle(words)
        if rng.random() < noise:
            label = "negative" if label == "positive" else "positive"
        rows.append((" ".join(words), label))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("sentence", "label")) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join(f"{t}\t{l}\n" for t, l in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def sentiment_dir(tmp_path_factory) -> Path:
    """train/dev/test TSVs with string labels."""
    d = tmp_path_factory.mktemp("sentiment")
    write_tsv(d / "train.tsv", make_sentences(480, 1))
    write_tsv(d / "dev.tsv", make_sentences(80, 2))
    write_tsv(d / "test.tsv", make_sentences(80, 3))
    return d


def train_wordpiece(texts: list[str], vocab_size: int):
    """A lowercasing BertTokenizerFast whose WordPiece vocabulary is trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(texts, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)


def save_tiny_bert(folder: Path, tokenizer, seed: int) -> Path:
    """A 2-layer BERT (hidden 32, random weights) with ``tokenizer``, saved as a local Hugging Face folder."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def wordpiece(tmp_path_factory):
    """A BertTokenizerFast whose WordPiece vocabulary is trained on the fixture corpus."""
    return train_wordpiece([t for t, _ in make_sentences(400, 0)], 200)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, wordpiece) -> Path:
    """A 2-layer BERT (hidden 32) saved as a local Hugging Face folder."""
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert", wordpiece, seed=0)


def save_tiny_gpt2(folder: Path, texts: list[str], seed: int) -> Path:
    """A 2-layer GPT-2 (hidden 32, random weights) with a byte-level BPE tokenizer trained on ``texts``; like
    GPT-2's own, the tokenizer has an end-of-text token and no pad token."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, special_tokens=["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=64)
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=eos, eos_token_id=eos)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_llama_gguf(path: Path, texts: list[str], seed: int):
    """A 2-layer Llama-style decoder (hidden 32, random weights) with a byte-level BPE tokenizer, written as one
    GGUF file the way llama.cpp's converter writes it (GGUF tensor names, q/k rows permuted for its rotary
    layout, float32 tensors).  Returns the Hugging Face model it was written from, to compare against."""
    import json

    import gguf
    import numpy as np
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, special_tokens=["<|endoftext|>"])
    vocab = bpe.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(bpe._tokenizer.to_str())["model"]["merges"]]
    eos, heads, layers = vocab["<|endoftext|>"], 2, 2
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=64,
                         bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=False, rope_theta=10000.0)
    model = LlamaForCausalLM(config).eval()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(32 // heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t == "<|endoftext|>" else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    for name, tensor in model.state_dict().items():
        data = tensor.float().numpy()
        if name.endswith(("q_proj.weight", "k_proj.weight")):  # llama.cpp's rotary layout; transformers undoes it
            data = data.reshape(heads, 2, data.shape[0] // heads // 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)
        w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="session")
def tiny_llama_gguf(tmp_path_factory) -> Path:
    """A tiny Llama-style decoder as a single GGUF file (what llama.cpp / Ollama users hold)."""
    path = tmp_path_factory.mktemp("models") / "tiny-llama.gguf"
    save_tiny_llama_gguf(path, [t for t, _ in make_sentences(400, 0)], seed=3)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-layer decoder-only GPT-2 saved as a local Hugging Face folder (its tokenizer has no pad token)."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", [t for t, _ in make_sentences(400, 0)],
                          seed=2)


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory, wordpiece) -> Path:
    """A 3-layer DistilBERT (dim 32): an architecture peft has no LoRA target table for."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(1)
    d = tmp_path_factory.mktemp("models") / "tiny-distilbert"
    config = DistilBertConfig(vocab_size=len(wordpiece), dim=32, n_layers=3, n_heads=2, hidden_dim=64,
                              max_position_embeddings=64)
    DistilBertModel(config).save_pretrained(d)
    wordpiece.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_space(tmp_path_factory, tiny_bert, tiny_distilbert) -> Path:
    """A search space over both tiny backbones and all four strategies, with rates that suit them."""
    p = tmp_path_factory.mktemp("spaces") / "tiny.yaml"
    p.write_text(textwrap.dedent(f"""\
        task: text-cls
        backbones: [{tiny_bert}, {tiny_distilbert}]
        params:
          batch_size: [16]
          weight_decay: {{distribution: loguniform, low: 1.0e-4, high: 1.0e-2}}
        strategies:
          linear_probe:
            C: {{distribution: loguniform, low: 1.0e-1, high: 1.0e+1}}
          freeze:
            freeze_depth: {{distribution: int, low: 0, high: num_layers}}
            lr: {{distribution: loguniform, low: 2.0e-3, high: 6.0e-3}}
          full:
            lr: {{distribution: loguniform, low: 2.0e-3, high: 6.0e-3}}
          lora:
            lr: {{distribution: loguniform, low: 5.0e-3, high: 2.0e-2}}
            lora_r: [2, 4]
        """))
    return p


@pytest.fixture(scope="session")
def text_ctx(sentiment_dir, tiny_bert):
    """A TrialContext over the sentiment data and the tiny BERT, for running the trial loop without Ray."""
    from autotransfer.tables import load_text_splits
    from autotransfer.tasks import get_task
    from autotransfer.training import TrialContext

    class Settings:
        trust_remote_code = False
        max_length = None

    task = get_task("text-cls")
    splits = load_text_splits(sentiment_dir)
    info = task.describe_backbone(str(tiny_bert), Settings())
    prepared, _ = task.prepare([info], splits, Settings())
    return TrialContext(task="text-cls", backbones={info.name: info}, prepared=prepared,
                        label_names=splits.label_names, max_epochs=4, evals_per_epoch=2, seed=0)


# --------------------------------------------------------------------------- tagged sentences (NER)
PEOPLE = [["anna", "berg"], ["otto"], ["maria", "lopez"], ["kenji"], ["lena", "fox"], ["ivan", "petrov"]]
PLACES = [["paris"], ["new", "york"], ["lima"], ["cape", "town"], ["oslo"], ["rio"]]
VERBS = ["visited", "left", "saw", "loved", "missed", "reached"]
OTHER = ["the", "a", "city", "today", "again", "quite", "yesterday", "with", "friends", "and", "then", "slowly"]


def make_tagged(n: int, seed: int, max_words: int = 12) -> list[list[tuple[str, str]]]:
    """Sentences "PERSON verb PLACE ..." in shuffled order, tagged in IOB2 (PER, LOC); a few with no entity."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts: list[list[tuple[str, str]]] = [[(w, "O")] for w in rng.choices(OTHER, k=rng.randint(1, 4))]
        if rng.random() < 0.9:
            for words, kind in ((rng.choice(PEOPLE), "PER"), (rng.choice(PLACES), "LOC")):
                parts.append([(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)])
            parts.append([(rng.choice(VERBS), "O")])
        rng.shuffle(parts)
        out.append([tok for part in parts for tok in part][:max_words])
    return out


def write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    path.write_text("\n".join("".join(f"{w}\t{t}\n" for w, t in s) for s in sentences), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def ner_dir(tmp_path_factory) -> Path:
    """train/dev/test CoNLL files of tagged sentences."""
    d = tmp_path_factory.mktemp("ner")
    write_conll(d / "train.tsv", make_tagged(240, 1))
    write_conll(d / "dev.tsv", make_tagged(60, 2))
    write_conll(d / "test.tsv", make_tagged(60, 3))
    return d


@pytest.fixture(scope="session")
def tiny_tagger(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) whose WordPiece vocabulary covers the tagged corpus, as a local folder."""
    tokenizer = train_wordpiece([" ".join(w for w, _ in s) for s in make_tagged(300, 0)], 120)
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-tagger", tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_token_space(tmp_path_factory, tiny_tagger) -> Path:
    """A token-cls space over the tiny tagger and three strategies, with rates that suit it."""
    p = tmp_path_factory.mktemp("spaces") / "ner.yaml"
    p.write_text(textwrap.dedent(f"""\
        task: token-cls
        backbones: [{tiny_tagger}]
        params:
          batch_size: [16]
        strategies:
          linear_probe:
            C: {{distribution: loguniform, low: 1.0, high: 1.0e+2}}
          full:
            lr: {{distribution: loguniform, low: 2.0e-3, high: 6.0e-3}}
          lora:
            lr: {{distribution: loguniform, low: 5.0e-3, high: 2.0e-2}}
            lora_r: [4]
        """))
    return p


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the in-process end-to-end tests (autotransfer reuses it)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


# --------------------------------------------------------------------------- images
def draw_shape(rng, colour: tuple[int, int, int], size: int = 64):
    """A noisy background with a filled shape of roughly ``colour``."""
    import numpy as np
    from PIL import Image, ImageDraw

    bg = rng.integers(90, 166, size=(size, size, 3), dtype=np.uint8)
    im = Image.fromarray(bg)
    d = ImageDraw.Draw(im)
    x0, y0 = (int(v) for v in rng.integers(4, size // 2, size=2))
    w = int(rng.integers(size // 4, size // 2))
    jitter = tuple(int(max(0, min(255, c + rng.integers(-30, 30)))) for c in colour)
    (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x0 + w, y0 + w], fill=jitter)
    return im


def make_image_tree(root: Path, per_class: int, seed: int, quirks: bool = False) -> Path:
    """``root/<class>/*.png`` with red vs blue shapes; ``quirks`` adds odd modes and bad files."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for cls, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(rng, colour).save(d / f"{cls}_{i}.png")
    if quirks:
        draw_shape(rng, (220, 30, 30)).convert("L").save(root / "red" / "gray.png")
        draw_shape(rng, (220, 30, 30)).convert("RGBA").save(root / "red" / "alpha.png")
        draw_shape(rng, (30, 30, 220)).convert("P").save(root / "blue" / "palette.gif")
        draw_shape(rng, (30, 30, 220)).save(root / "blue" / "photo.jpg", quality=90)
        (root / "blue" / "empty.jpg").write_bytes(b"")
        good = (root / "red" / "red_0.png").read_bytes()
        (root / "red" / "truncated.png").write_bytes(good[: len(good) // 3])
        (root / "red" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """train/val/test ImageFolder splits of red vs blue shapes."""
    root = tmp_path_factory.mktemp("shapes")
    make_image_tree(root / "train", 40, 0)
    make_image_tree(root / "val", 12, 1)
    make_image_tree(root / "test", 12, 2)
    return root


def _save_timm(tmp_path_factory, name: str) -> Path:
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("timm") / name
    save_for_hf(timm.create_model(name, pretrained=False), str(d), safe_serialization=True)
    return d


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory) -> Path:
    """timm's test_resnet (random weights) as a local-dir: folder."""
    return _save_timm(tmp_path_factory, "test_resnet")


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    """timm's test_vit (random weights) as a local-dir: folder."""
    return _save_timm(tmp_path_factory, "test_vit")


@pytest.fixture(scope="session")
def tiny_image_space(tmp_path_factory, tiny_resnet, tiny_vit) -> Path:
    p = tmp_path_factory.mktemp("spaces") / "tiny-image.yaml"
    p.write_text(textwrap.dedent(f"""\
        task: image-cls
        backbones: [local-dir:{tiny_resnet}, local-dir:{tiny_vit}]
        params:
          batch_size: [16]
          augment: [none, light]
        strategies:
          linear_probe:
            C: {{distribution: loguniform, low: 1.0e-1, high: 1.0e+1}}
          freeze:
            freeze_depth: {{distribution: int, low: 0, high: num_layers}}
            lr: {{distribution: loguniform, low: 1.0e-3, high: 5.0e-3}}
          full:
            lr: {{distribution: loguniform, low: 1.0e-3, high: 5.0e-3}}
          lora:
            lr: {{distribution: loguniform, low: 3.0e-3, high: 1.0e-2}}
            lora_r: [2, 4]
        """))
    return p


# --------------------------------------------------------------------------- detection
def make_box_scenes(root: Path, n: int, seed: int, name: str = "train.json", size=(96, 64)) -> Path:
    """A COCO file of noisy scenes with one or two solid rectangles each (red = "stop", blue = "yield"), every
    sixth scene a negative; the images in ``root/img``."""
    import json

    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        w, h = size
        im = Image.fromarray(rng.integers(90, 166, size=(h, w, 3), dtype=np.uint8))
        pen = ImageDraw.Draw(im)
        for _ in range(0 if i % 6 == 5 else int(rng.integers(1, 3))):
            cls = int(rng.integers(0, 2))
            bw, bh = (int(v) for v in rng.integers(18, 30, size=2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            pen.rectangle([x, y, x + bw - 1, y + bh - 1], fill=(220, 30, 30) if cls == 0 else (30, 30, 220))
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": cls + 1,
                                "bbox": [x, y, bw, bh], "iscrowd": 0})
        file = f"img/{Path(name).stem}-{i}.png"
        im.save(root / file)
        images.append({"id": i, "file_name": file, "width": w, "height": h})
    path = root / name
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "stop"}, {"id": 2, "name": "yield"}]}))
    return path


@pytest.fixture(scope="session")
def box_scenes(tmp_path_factory) -> Path:
    """A detection data folder: train.json, val.json, test.json of generated scenes."""
    root = tmp_path_factory.mktemp("boxes")
    make_box_scenes(root, 40, 0, "train.json")
    make_box_scenes(root, 16, 1, "val.json")
    make_box_scenes(root, 12, 2, "test.json")
    return root
