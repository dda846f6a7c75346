"""Hugging Face interop: GPT-2 checkpoints (save_pretrained folders) imported as native picolm models, and
`picolm export` writing runs as folders that `transformers` loads, checked against transformers itself; folders and
checkpoints from elsewhere never run their own code."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from picolm.checkpoint import load_checkpoint
from picolm.cli import main
from picolm.data.loader import TokenWindows
from picolm.errors import PicolmError
from picolm.interop.export import hf_tokenizer
from picolm.interop.convert import from_gpt2, to_gpt2
from picolm.loading import load_model, load_start
from picolm.tokenizer import (EOS, HFTokenizer, char_tokenizer, gpt2_tokenizer, hub_tokenizer, numeric_tokenizer,
                             train_bpe)

transformers = pytest.importorskip("transformers")

WORDS = "the cat sat on a mat while dogs ran in parks and birds sang songs near old trees".split()
N_POSITIONS = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + "." for _ in range(200)]
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bpe(text_file):
    return train_bpe(text_file.read_text(encoding="utf-8").splitlines(), vocab_size=300)


def random_gpt2(vocab_size: int, eos: int, tie: bool = True, **settings):
    """A small GPT2LMHeadModel with its biases and norms moved off their initial 0 and 1."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=N_POSITIONS, vocab_size=vocab_size,
                                     bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=tie, **settings)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save_with_tokenizer(model, tokenizer, folder):
    model.save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.tok, eos_token=EOS).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory, hf_offline, bpe):
    """(a folder written by save_pretrained with a tokenizer.json beside it, the GPT2LMHeadModel in it)."""
    model = random_gpt2(bpe.vocab_size, bpe.eos_id)
    return save_with_tokenizer(model, bpe, tmp_path_factory.mktemp("gpt2")), model


def _ids(vocab_size: int, shape, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- import


def test_imported_gpt2_is_a_native_model_with_the_hf_logits(gpt2_folder, bpe):
    folder, reference = gpt2_folder
    loaded = load_start(str(folder))
    c = loaded.model.config
    assert type(loaded.model).__name__ == "GPT"
    assert (c.arch, c.position, c.mlp, c.norm, c.attention, c.bias, c.tie_weights, c.block_size, c.vocab_size) == \
        ("gpt", "learned", "gelu", "layernorm", "softmax", True, True, N_POSITIONS, bpe.vocab_size)
    idx = _ids(bpe.vocab_size, (3, N_POSITIONS))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(idx), reference(idx).logits, atol=1e-4, rtol=0)
    text = "the cat sat on a mat.<|endoftext|>birds sang"
    assert loaded.tokenizer.encode(text) == bpe.encode(text) and loaded.tokenizer.eos_id == bpe.eos_id


def test_untied_gpt2_imports_and_round_trips_exactly(bpe):
    reference = random_gpt2(bpe.vocab_size, bpe.eos_id, tie=False)
    model = from_gpt2(reference)
    assert not model.config.tie_weights and model.lm_head.weight is not model.wte.weight
    idx = _ids(bpe.vocab_size, (2, N_POSITIONS))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference(idx).logits, atol=1e-4, rtol=0)
    again = to_gpt2(model).state_dict()
    for name, weight in reference.state_dict().items():
        assert torch.equal(again[name], weight), name
    back = from_gpt2(to_gpt2(model))  # import(export(model)) is the model
    for name, weight in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], weight), name


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory, gpt2_folder, text_file):
    """The text file prepared with the GPT-2 folder's tokenizer."""
    data = tmp_path_factory.mktemp("gpt2-data") / "data"
    assert main(["prepare", "--source", str(text_file), "--out", str(data), "--tokenizer", f"hf:{gpt2_folder[0]}"]) == 0
    return data


def test_training_from_a_gpt2_folder_starts_at_the_hf_loss(gpt2_folder, gpt2_data, tmp_path, capsys):
    folder, reference = gpt2_folder
    data, run = gpt2_data, tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--init-from", str(folder), "--train.max_steps",
                 "2", "--train.log_every", "1", "--train.batch_size", "4", "--train.eval_every", "2",
                 "--train.eval_batches", "1", "--train.num_samples", "0", "--log.progress", "false"]) == 0
    assert "a GPT-2 imported as a picolm model" in capsys.readouterr().out
    first = json.loads((run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[0])
    batch = TokenWindows(data / "train.bin", N_POSITIONS, seed=1337).next_batch(4)  # the trainer's first batch
    with torch.no_grad():
        hf_loss = F.cross_entropy(reference(batch["input_ids"]).logits.flatten(0, 1), batch["targets"].flatten())
    assert first["step"] == 1 and first["train/loss"] == pytest.approx(float(hf_loss), abs=1e-5)
    trained = load_model(run)
    assert trained.model.config.block_size == N_POSITIONS and trained.tokenizer.encode("the cat") == \
        hub_tokenizer(str(folder)).encode("the cat")


def test_import_refusals_are_one_clear_line(numeric_data, bpe, tmp_path, monkeypatch, capsys):
    llama = tmp_path / "llama"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=bpe.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=32)).save_pretrained(llama)
    with pytest.raises(PicolmError, match="train.init_from: model_type is 'llama'.*--hf-model"):
        load_start(str(llama))
    exact_gelu = save_with_tokenizer(random_gpt2(bpe.vocab_size, bpe.eos_id, activation_function="gelu"), bpe,
                                     tmp_path / "erf")
    with pytest.raises(PicolmError, match="activation_function is 'gelu'; picolm's GELU is the tanh approximation"):
        load_start(str(exact_gelu))
    with pytest.raises(PicolmError, match="no such run directory or checkpoint"):
        load_start(str(tmp_path / "nowhere"))

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PicolmError, match="picolm-tests/no-such-gpt2: train.init_from: could not load it from the "
                                          "Hugging Face hub") as info:
        load_start("picolm-tests/no-such-gpt2")
    assert "\n" not in str(info.value)

    capsys.readouterr()
    assert main(["train", "--data", str(numeric_data), "--out", str(tmp_path / "run"), "--init-from", str(llama)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ---------------------------------------------------------------- export


@pytest.fixture(scope="module")
def exported(tmp_path_factory, hf_offline, numeric_data, text_file):
    """{kind: (run, exported folder)}: a GPT-2-shaped run on BPE text; on numbers a Llama-shaped one, a
    GPT-NeoX-shaped one (RoPE with GELU and LayerNorm), and two only picolm computes (linear attention, differential
    inputs); each trained 2 steps and exported through the CLI."""
    root = tmp_path_factory.mktemp("export")
    text_data = root / "text-data"
    assert main(["prepare", "--source", str(text_file), "--out", str(text_data), "--vocab-size", "300"]) == 0
    settings = {"gpt2": (text_data, []),
                "llama": (numeric_data, ["--model.position", "rope", "--model.mlp", "swiglu", "--model.norm",
                                         "rmsnorm", "--model.bias", "false", "--model.rope_base", "500"]),
                "neox": (numeric_data, ["--model.position", "rope"]),
                "linear": (numeric_data, ["--model.attention", "linear", "--model.norm", "rmsnorm"]),
                "differential": (numeric_data, ["--model.differential", "true", "--model.position", "rope"])}
    out = {}
    for kind, (data, extra) in settings.items():
        run, folder = root / kind, root / f"{kind}-hf"
        assert main(["train", "--data", str(data), "--out", str(run), "--train.max_steps", "2",
                     "--train.num_samples", "0", *TINY, *extra]) == 0
        assert main(["export", str(run), "--format", "hf", str(folder)]) == 0
        out[kind] = run, folder
    return out


OUTSIDE = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
results = {}
for case in json.load(open(sys.argv[1])):
    tokenizer = AutoTokenizer.from_pretrained(case["folder"])
    model = AutoModelForCausalLM.from_pretrained(case["folder"]).eval()
    ids = tokenizer(case["text"])["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    results[case["folder"]] = {"class": type(model).__name__, "ids": ids, "eos": tokenizer.eos_token_id,
                               "pad": tokenizer.pad_token_id, "generation_eos": model.generation_config.eos_token_id,
                               "error": (logits - torch.tensor(case["logits"])).abs().max().item()}
results["picolm imported"] = any(name.split(".")[0] == "picolm" for name in sys.modules)
print(json.dumps(results))
"""


def test_exported_runs_load_without_picolm_and_give_its_logits(exported, tmp_path):
    texts = {"gpt2": "the cat sat on a mat.<|endoftext|>dogs ran", "llama": "3 6 9 12 <|endoftext|> 5 10",
             "neox": "2 4 8 16\n<|endoftext|> 7"}
    cases, expected = [], {}
    for kind, (run, folder) in exported.items():
        if kind not in texts:
            continue
        loaded = load_model(run)
        ids = loaded.tokenizer.encode(texts[kind])
        with torch.no_grad():
            logits = loaded.model(torch.tensor([ids]))[0]
        cases.append({"folder": str(folder), "text": texts[kind], "logits": logits.tolist()})
        expected[str(folder)] = ids, loaded.tokenizer
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "generation_config.json",
                                                             "model.safetensors", "tokenizer.json",
                                                             "tokenizer_config.json"]
    (tmp_path / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    result = subprocess.run([sys.executable, "-c", OUTSIDE, str(tmp_path / "cases.json")], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)  # from elsewhere: the worktree is not importable
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results.pop("picolm imported") is False
    for kind in texts:
        folder = exported[kind][1]
        got = results[str(folder)]
        ids, tokenizer = expected[str(folder)]
        assert got["class"] == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                                "neox": "GPTNeoXForCausalLM"}[kind]
        assert got["ids"] == ids and tokenizer.eos_id in ids
        assert (got["eos"], got["pad"], got["generation_eos"]) == (tokenizer.eos_id, tokenizer.pad_id,
                                                                   tokenizer.eos_id)
        assert got["error"] < 1e-5, kind


@pytest.mark.parametrize("kind", ["linear", "differential"])
def test_other_models_export_as_picolm_for_causal_lm(exported, kind):
    from picolm.interop.picolm_transformers import PicolmForCausalLM  # importing it registers the Auto classes

    run, folder = exported[kind]
    loaded = load_model(run)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert isinstance(model, PicolmForCausalLM) and model.config.model_type == "picolm"
    assert model.config.to_model_config() == loaded.model.config
    text = "5 10 15 20 <|endoftext|> 1 2"
    ids = loaded.tokenizer.encode(text)
    assert tokenizer.encode(text) == ids
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([ids])).logits, loaded.model(torch.tensor([ids])), atol=1e-5,
                                   rtol=0)
    assert (model.config.eos_token_id, model.generation_config.pad_token_id) == (loaded.tokenizer.eos_id,
                                                                                  loaded.tokenizer.pad_id)


def test_export_prints_the_files_and_the_class(exported, tmp_path, capsys):
    run, _ = exported["llama"]
    out = tmp_path / "empty"
    out.mkdir()  # an empty folder may be written into
    assert main(["export", str(run), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: config.json, generation_config.json, model.safetensors" in printed
    assert "loads as LlamaForCausalLM with AutoModelForCausalLM.from_pretrained" in printed
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no temporary folder left beside it
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert (config["rope_theta"], config["rope_parameters"]["rope_theta"], config["dtype"]) == (500.0, 500.0,
                                                                                                 "float32")


def test_a_hf_model_run_is_exported_as_its_own_class(bpe, gpt2_data, tmp_path):
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=bpe.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=N_POSITIONS, tie_word_embeddings=False))
    folder = save_with_tokenizer(llama, bpe, tmp_path / "llama")
    run, out = tmp_path / "run", tmp_path / "out"
    assert main(["train", "--data", str(gpt2_data), "--out", str(run), "--hf-model", str(folder), "--train.max_steps",
                 "1", "--train.batch_size", "2", "--train.eval_every", "1", "--train.eval_batches", "1",
                 "--train.num_samples", "0", "--log.progress", "false"]) == 0
    assert main(["export", str(run), str(out)]) == 0
    trained = load_model(run)
    exported = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(exported).__name__ == "LlamaForCausalLM" and exported.config.num_key_value_heads == 2
    idx = _ids(bpe.vocab_size, (2, N_POSITIONS))
    with torch.no_grad():
        torch.testing.assert_close(exported(idx).logits, trained.model(idx), atol=1e-5, rtol=0)
    assert transformers.AutoTokenizer.from_pretrained(out).encode("the cat sat.") == bpe.encode("the cat sat.")


@pytest.mark.parametrize(("args", "message"), [
    (["export", "no/such/run", "OUT"], "no/such/run: no such run directory or checkpoint"),
    (["export", "RUN", "EXISTING"], "already exists and is not empty"),
    (["export", "RUN", "OUT", "--format", "onnx"], "--format: unknown format 'onnx' (known: hf)"),
])
def test_export_bad_input_gives_one_line_and_status_2(exported, args, message, tmp_path):
    run, folder = exported["gpt2"]
    args = [{"RUN": str(run), "EXISTING": str(folder), "OUT": str(tmp_path / "out")}.get(a, a) for a in args]
    result = subprocess.run([sys.executable, "-m", "picolm", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def _bos_adding(bpe):
    """A Hugging Face tokenizer whose post-processor adds a BOS (as Llama's does): picolm adds none."""
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_str(bpe.tok.to_str())
    tok.post_processor = processors.TemplateProcessing(single=f"{EOS} $A", special_tokens=[(EOS, bpe.eos_id)])
    return HFTokenizer(tok, "hf")


TOKENIZERS = {
    "bpe": (lambda bpe: bpe, ["the cat sat.", " two  spaces\n\nnew lines", "<|endoftext|>birds<|pad|>", "ünïcödé ✓"]),
    "gpt2": (lambda bpe: gpt2_tokenizer(), ["Hello, world!<|endoftext|>", "  leading and\ttabs", "ünïcödé ✓"]),
    "hf": (_bos_adding, ["the cat sat.", "<|endoftext|> dogs"]),
    "numeric": (lambda bpe: numeric_tokenizer(99), ["1 2 3", "  10\n20\t30 ", "5 <|endoftext|> 7 <|pad|>", ""]),
    "char": (lambda bpe: char_tokenizer(["the cat sat on a mat.\n", "<|endoftext|> \t<|mask|>"]),
             ["the cat", "a\tmat.\n\n", "<|endoftext|>", "cat<|mask|>"]),
}


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_exported_tokenizer_encodes_and_decodes_as_picolm(kind, bpe, tmp_path, hf_offline):
    make, texts = TOKENIZERS[kind]
    tokenizer = make(bpe)
    hf_tokenizer(tokenizer, 64).save_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in texts:
        ids = tokenizer.encode(text)
        assert theirs.encode(text) == ids, text
        assert theirs.decode(ids) == tokenizer.decode(ids), text
    assert (theirs.eos_token_id, theirs.bos_token_id, theirs.pad_token_id) == (tokenizer.eos_id, tokenizer.eos_id,
                                                                               tokenizer.pad_id)
    assert theirs.model_max_length == 64


def test_symbol_outside_the_vocabulary_fails_in_both(tmp_path, hf_offline):
    numbers = numeric_tokenizer(9)
    hf_tokenizer(numbers, 16).save_pretrained(tmp_path)
    with pytest.raises(PicolmError):
        numbers.encode("1 12")
    with pytest.raises(Exception, match="Missing"):
        transformers.AutoTokenizer.from_pretrained(tmp_path).encode("1 12")


def test_help_names_the_export_classes_and_the_norm_option():
    export_help = subprocess.run([sys.executable, "-m", "picolm", "export", "--help"], capture_output=True,
                                 text=True, timeout=60).stdout
    for name in ("GPT2LMHeadModel", "LlamaForCausalLM", "GPTNeoXForCausalLM", "PicolmForCausalLM",
                 "model.safetensors", "lm_eval"):
        assert name in export_help
    train_help = " ".join(subprocess.run([sys.executable, "-m", "picolm", "train", "--help"], capture_output=True,
                                         text=True, timeout=60).stdout.split())
    assert "--model.norm" in train_help and "layernorm | rmsnorm" in train_help
    assert "GPT-2 in Hugging Face form" in train_help


# ---------------------------------------------------------------- files from elsewhere never run code

OWN_CODE = """import pathlib
pathlib.Path({marker!r}).write_text("ran")
"""


def own_code_file(folder, marker):
    """Python beside the model that, were it imported, would write `marker`."""
    (folder / "own_code.py").write_text(OWN_CODE.format(marker=str(marker)), encoding="utf-8")


def test_a_folder_naming_code_of_its_own_is_refused_and_its_code_never_runs(exported, numeric_data, tmp_path,
                                                                            monkeypatch, capsys):
    """transformers asks on stdin whether to run a folder's own code (`auto_map`), and a `y` piped in runs it: picolm
    passes trust_remote_code=False, so the model (--hf-model), the config (--init-from) and the tokenizer are refused
    in one line, whatever stdin would answer."""
    questions = []
    monkeypatch.setattr("builtins.input", lambda prompt="": questions.append(prompt) or "y")  # a `y` piped in
    marker = tmp_path / "code-ran"
    model = tmp_path / "own-model"
    model.mkdir()
    own_code_file(model, marker)
    (model / "config.json").write_text(json.dumps({
        "model_type": "picolm-test-own-code",
        "auto_map": {"AutoConfig": "own_code.OwnConfig", "AutoModelForCausalLM": "own_code.OwnModel"}}))
    # an exported picolm model (its config type has no tokenizer of its own in transformers) whose tokenizer names
    # its own class instead of carrying a tokenizer.json
    tokenizer = tmp_path / "own-tokenizer"
    shutil.copytree(exported["linear"][1], tokenizer)
    own_code_file(tokenizer, marker)
    (tokenizer / "tokenizer.json").rename(tokenizer / "vocab.json")
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "OwnTokenizer", "auto_map": {"AutoTokenizer": ["own_code.OwnTokenizer", None]}}))
    for option, folder, field in (("--hf-model", model, "train.hf_model"), ("--init-from", model, "train.init_from"),
                                  ("--hf-model", tokenizer, "train.hf_model")):
        capsys.readouterr()
        status = main(["train", "--data", str(numeric_data), "--out", str(tmp_path / "run"), option, str(folder)])
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("picolm train:")]
        assert not marker.exists() and questions == [], (option, folder)
        assert status == 2 and len(errors) == 1, (option, folder, errors)
        assert f"{folder}: {field}: refused: its config names Python code of its own (auto_map)" in errors[0]
        assert "trust_remote_code=False" in errors[0]


class RunsCode:
    """Unpickled, it runs a shell command: what a checkpoint from elsewhere may hold instead of tensors."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_a_checkpoint_that_would_run_code_is_refused_and_never_advises_unsafe_loading(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    path = tmp_path / "foreign.pt"
    torch.save({"format_version": 1, "architecture": "gpt", "model_config": {}, "model_state_dict": {},
                "payload": RunsCode(marker)}, path)
    for mmap in (False, True):
        with pytest.raises(PicolmError) as info:
            load_checkpoint(path, mmap=mmap)
        message = str(info.value)
        assert message.startswith(f"{path}: refused: the file holds Python objects other than tensors")
        assert "never runs code" in message and "weights_only=False" not in message and "\n" not in message
    capsys.readouterr()
    assert main(["generate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and "weights_only=False" not in err
    garbage = tmp_path / "garbage.pt"  # unreadable, but names no code: the plain message
    garbage.write_bytes(b"\x80\x02not a pickle at all" * 4)
    with pytest.raises(PicolmError, match=r"not a readable checkpoint \(UnpicklingError\)$"):
        load_checkpoint(garbage)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the trap is real: loading it unsafely runs the command
    assert marker.exists()
