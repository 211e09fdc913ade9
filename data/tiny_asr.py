"""A tiny random Whisper in CTranslate2 format, built fully offline.

The model has random weights: the text it emits is MEANINGLESS, a fixed string
of about eight words from a small vocabulary (it does not depend on the audio;
which words depends on the seed), and its no_speech_prob is always near 0. It
exists so that tests and the demo can run the real faster-whisper code path
with no network access and no downloaded weights. For real transcription use
a faster-whisper model such as "small.en" (pre-downloaded) or a local
CTranslate2 folder.

How it is made (DESIGN.md section 5): a byte-level BPE is trained with
`tokenizers` on a small English word list; Whisper's special tokens and the
1501 timestamp tokens follow the text tokens (fewer than 51865 entries, so the
model is English-only); a random `WhisperForConditionalGeneration` (d_model 64,
2 encoder + 2 decoder layers, 80 mel bins) gets its output rows from
`<|endoftext|>` upward zeroed so greedy decoding picks text tokens, and a few
edits (see `_shape_decoder`) so it emits whole words and stops early; the
CTranslate2 converter writes the folder with tokenizer.json and
preprocessor_config.json copied in (faster-whisper would otherwise try to
download a tokenizer).

Needs the [train] extra (torch, transformers) and ctranslate2.

    python -m crab_rt.data.tiny_asr --out models/tiny-asr

`size` picks the network: "micro" (the default above, for tests and the demo)
or the shapes of OpenAI's English-only "tiny", "base" and "small" Whispers
(width, layers, heads, 80 mel bins, and a vocabulary padded with unused
filler tokens to the real 51864 entries), so a latency benchmark pays the
real encoder and output-projection compute. The transcript is still a fixed
eight tokens: decoding cost is that of a short utterance, not of a real one.

    python -m crab_rt.data.tiny_asr --size small --out models/random-whisper-small
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from crab_rt.errors import ConfigError, CrabError, missing_dependency, requires_extra

__all__ = ["build_tiny_whisper", "is_tiny_whisper", "describe_size", "SIZES", "main"]

log = logging.getLogger(__name__)

_MARKER = "crab_tiny_asr.json"
_FORMAT_VERSION = 1
# size -> (d_model, encoder = decoder layers, attention heads, ffn width); tiny/base/small are OpenAI's shapes.
SIZES = {"micro": (64, 2, 2, 128), "tiny": (384, 4, 6, 1536), "base": (512, 6, 8, 2048), "small": (768, 12, 12, 3072)}
_REAL_VOCAB = 51864  # OpenAI's English-only Whisper vocabulary (text + special + timestamp tokens)
_REQUIRED = ("model.bin", "config.json", "tokenizer.json", "preprocessor_config.json")

_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
_PROMPT_TOKENS = 2  # <|startoftranscript|> <|notimestamps|> for an English-only model
_TEXT_TOKENS = 8  # the transcript ends after this many tokens
_N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in 20 ms steps

# Neutral filler and emotion cue words, the vocabulary of the synthetic corpus.
_WORDS = """
the a an and or but so because if then when while with without of to in on at for from by
about into over after before under again very really just quite too also not no yes
i you he she we they it me him her us them my your his our their this that these those
is are was were be been being am have has had do does did will would can could should may
might must shall go goes went going come came get got make made take took see saw know
knew think thought say said tell told feel felt want need like look looks find give work
call try ask seem leave put mean keep let begin show hear play run move live believe
hold bring happen write sit stand lose pay meet include continue set learn change lead
understand watch follow stop create speak read spend grow open walk win offer remember
consider appear buy wait serve die send expect build stay fall cut reach kill remain
time year people way day man woman child world life hand part place case week company
system program question work government number night point home water room mother area
money story fact month lot right study book eye job word business issue side kind head
house service friend father power hour game line end member law car city community name
team minute idea kid body information back parent face others level office door health
person art war history party result morning reason research girl guy moment air teacher
today tomorrow yesterday meeting project plan report email call weekend dinner lunch
coffee phone train bus traffic weather rain sun news music movie show class school
okay ok well oh uh um hmm yeah sure right fine alright maybe perhaps actually basically
great wonderful love lovely happy glad excited amazing awesome fantastic excellent good
nice beautiful perfect brilliant delighted thrilled joy fun laugh smile enjoy proud
angry hate terrible awful furious mad annoyed horrible worst stupid ridiculous
unacceptable disgusting outrageous upset frustrated rage shout
sad tired sorry lonely miss cry crying depressed unhappy hurt lost alone gloomy down
heartbroken disappointed grief tears sigh exhausted bored
afraid scared fear nervous worried anxious surprise surprised wow shocked
neutral normal usual regular calm quiet average plain standard simple
one two three four five six seven eight nine ten hundred first second last next
new old big small long short high low early late young little own other same different
""".split()


def is_tiny_whisper(path: str | Path, seed: int | None = None, size: str | None = None) -> bool:
    """Whether `path` holds a complete random Whisper built by this module.

    Args:
        path: a folder.
        seed: if given, the build must have used this seed.
        size: if given, the build must be this size (see SIZES).

    Returns:
        True when every required file and the build marker are present and match.
    """
    folder = Path(path)
    if not all((folder / name).is_file() for name in _REQUIRED):
        return False
    try:
        marker = json.loads((folder / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("format_version") != _FORMAT_VERSION:
        return False
    if size is not None and marker.get("size", "micro") != size:
        return False
    return seed is None or marker.get("seed") == seed


def _corpus(seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    lines = [" ".join(_WORDS[i : i + 12]) for i in range(0, len(_WORDS), 12)]
    for _ in range(400):
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))))
    # Capitalised and punctuated forms so the BPE learns them too.
    lines += [w.capitalize() + "." for w in _WORDS[:200]] + [w + "," for w in _WORDS[200:400]]
    return lines


def _build_tokenizer(seed: int, pad_to_real_vocab: bool = False):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    if pad_to_real_vocab:  # unused text tokens, so the output projection has the real width
        fillers = _REAL_VOCAB - len(_SPECIAL_TOKENS) - _N_TIMESTAMPS - tok.get_vocab_size()
        tok.add_tokens([AddedToken(f"<|filler{i}|>", special=False) for i in range(fillers)])
    n_text = tok.get_vocab_size()
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(_N_TIMESTAMPS)]
    tok.add_special_tokens(_SPECIAL_TOKENS + timestamps)
    # The added tokens must follow the text tokens in this exact order: faster-whisper
    # computes timestamp ids as <|notimestamps|> + 1 + k.
    for offset, token in enumerate(_SPECIAL_TOKENS + timestamps):
        if tok.token_to_id(token) != n_text + offset:
            raise RuntimeError(f"tiny ASR tokenizer: {token} got id {tok.token_to_id(token)}")
    return tok, n_text


def _shape_decoder(model, tok, eot: int, seed: int) -> None:
    """Edit the random decoder so that greedy decoding emits a few whole words, then stops.

    Random weights alone emit only timestamp tokens (they outnumber text tokens),
    or one word repeated to the 448-token limit. Logit of token i at a step is
    row_i . h with h = LayerNorm(x) * gamma + beta, so:
    - rows from <|endoftext|> upward are zeroed (logit 0);
    - beta gets a constant direction w, whole-word rows +w and every other text
      row -w: words score about +3, sub-word pieces about -3;
    - large random position embeddings make each step pick a different word;
    - from step _TEXT_TOKENS on, positions carry a strong direction u that the
      <|endoftext|> row matches, which ends the transcript there.
    """
    import torch

    d_model = model.config.d_model
    gen = torch.Generator().manual_seed(seed + 1)
    u, w = torch.linalg.qr(torch.randn(d_model, 2, generator=gen))[0].T  # orthonormal
    u, w = u - u.mean(), w - w.mean()  # LayerNorm removes the mean; keep what survives
    u, w = u / u.norm(), w / w.norm()

    rows = model.proj_out.weight  # tied with the decoder input embeddings
    rows[eot:] = 0.0
    vocab = tok.get_vocab()
    words = {vocab["\u0120" + word] for word in _WORDS if "\u0120" + word in vocab}
    is_word = torch.zeros(eot, dtype=torch.bool)
    is_word[sorted(words)] = True
    rows[:eot][is_word] += w
    rows[:eot][~is_word] -= w
    model.model.decoder.layer_norm.bias.copy_(3.0 * w)

    positions = model.model.decoder.embed_positions.weight
    noise = torch.randn(positions.shape, generator=gen)
    noise -= torch.outer(noise @ u, u) + torch.outer(noise @ w, w)  # keep u, w scores fixed
    positions.copy_(noise)
    positions[_PROMPT_TOKENS + _TEXT_TOKENS :] += 50.0 * u
    rows[eot] = 4.0 * u


def _build_hf_model(hf_dir: Path, seed: int, size: str) -> None:
    with requires_extra("train"):
        import torch
        import transformers

    d_model, layers, heads, ffn = SIZES[size]
    tok, n_text = _build_tokenizer(seed, pad_to_real_vocab=size != "micro")
    vocab_size = tok.get_vocab_size()
    ids = {name: tok.token_to_id(name) for name in _SPECIAL_TOKENS}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]

    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.save_pretrained(str(hf_dir))
    # save_pretrained may rewrite tokenizer.json; faster-whisper reads the raw one.
    tok.save(str(hf_dir / "tokenizer.json"))

    transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(str(hf_dir))

    config = transformers.WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=80,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        max_source_positions=1500,  # faster-whisper always feeds 30 s windows (3000 frames)
        max_target_positions=448,  # faster-whisper's fixed max_length
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=[],
        begin_suppress_tokens=[eot],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        _shape_decoder(model, tok, eot, seed)
    gen = model.generation_config
    gen.decoder_start_token_id = sot
    gen.eos_token_id = eot
    gen.pad_token_id = eot
    gen.bos_token_id = eot
    gen.no_timestamps_token_id = ids["<|notimestamps|>"]
    gen.suppress_tokens = []
    gen.begin_suppress_tokens = [eot]
    gen.is_multilingual = False
    gen.max_length = 448
    model.save_pretrained(str(hf_dir))


def _convert(hf_dir: Path, ct2_dir: Path) -> None:
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as e:
        raise missing_dependency("ctranslate2", "train") from e
    converter = TransformersConverter(
        str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"]
    )
    converter.convert(str(ct2_dir), force=True)


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """Show or hide transformers' tqdm bars for the build, then restore the setting."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # reported with the right extra by _build_hf_model
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
        else:
            hf_logging.disable_progress_bar()


def build_tiny_whisper(out_dir: str | Path, seed: int = 0, progress: bool = False, size: str = "micro") -> Path:
    """Build (or reuse) a random Whisper in CTranslate2 format.

    Args:
        out_dir: folder to create; an existing complete build with the same seed
            and size is returned as is (a few milliseconds).
        seed: seed of the tokenizer corpus and the random weights.
        progress: show transformers' progress bars. The steps and the time taken are
            logged at INFO to `crab_rt.data.tiny_asr` either way.
        size: "micro" (default) or a real Whisper shape: "tiny", "base", "small".

    Returns:
        The CTranslate2 model folder, loadable by `faster_whisper.WhisperModel`
        offline.

    Raises:
        ConfigError: unknown size, or `out_dir` exists, is not empty and is not a tiny ASR build.
        DependencyError: torch, transformers or ctranslate2 is not installed.
    """
    if size not in SIZES:
        raise ConfigError(f"tiny ASR size: unknown {size!r} (choose from {', '.join(SIZES)})")
    out = Path(out_dir)
    if is_tiny_whisper(out, seed, size):
        return out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"tiny ASR out_dir: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / _MARKER).is_file():
        raise ConfigError(
            f"tiny ASR out_dir: {out} is not empty and holds no tiny ASR build; "
            "choose an empty or new folder"
        )

    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tiny-asr-", dir=out.parent) as tmp:
        hf_dir, ct2_dir = Path(tmp) / "hf", Path(tmp) / "ct2"
        log.info("building tokenizer and random Whisper %s (%s)", size, describe_size(size))
        with _transformers_progress(progress):
            _build_hf_model(hf_dir, seed, size)
            log.info("converting to CTranslate2")
            _convert(hf_dir, ct2_dir)
        marker = {
            "format_version": _FORMAT_VERSION,
            "seed": seed,
            "size": size,
            "note": "random weights; the text is meaningless",
        }
        (ct2_dir / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)  # an empty folder or a stale/partial tiny ASR build
        ct2_dir.rename(out)
    log.info("wrote %s in %.1f s", out, time.perf_counter() - start)
    return out


def describe_size(size: str) -> str:
    """e.g. "d_model 768, 12+12 layers, 12 heads" for "small"."""
    d_model, layers, heads, _ = SIZES[size]
    return f"d_model {d_model}, {layers}+{layers} layers, {heads} heads"


class _EntryFormatter(logging.Formatter):
    """`[tiny_asr] step` for progress, `tiny_asr: error: ...` for problems (main() only)."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"tiny_asr: {record.levelname.lower()}: {message}"
        return f"[tiny_asr] {message}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m crab_rt.data.tiny_asr --out DIR`: steps on stderr, the folder on stdout.

    As an entry point it routes this module's log to stderr (INFO, or WARNING with
    --quiet) while it runs; the library functions above only log.
    """
    parser = argparse.ArgumentParser(
        prog="python -m crab_rt.data.tiny_asr",
        description="Build a tiny random Whisper (CTranslate2) for offline tests and the demo. "
        "Its transcripts are meaningless.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", choices=sorted(SIZES), default="micro",
                        help="micro (default: tests and demo) or a real Whisper shape for latency work: "
                        "tiny, base, small")
    parser.add_argument("--quiet", action="store_true", help="do not print progress")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EntryFormatter("%(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    log.propagate = False  # a CLI handler on "crab_rt" in the same process would print it twice
    try:
        path = build_tiny_whisper(args.out, seed=args.seed, progress=not args.quiet, size=args.size)
    except CrabError as e:
        log.error("%s", e)
        return 2
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
