"""Checkpoint I/O: atomic saves, loads that can never run code, and strict loading of the released weights.

* ``save_checkpoint(obj, path)``: temp file in the same folder, fsync, rename.  A process killed mid-write leaves
  the previous file untouched; there is never a half-written checkpoint under the real name.
* ``load_checkpoint(path)``: ``torch.load(weights_only=True)``.  A file whose pickle would build arbitrary objects
  (and could therefore run code) is refused before anything in it is executed.
* ``load_model(kind, preset, path, build)``: builds the model of a preset (``build`` is passed in: this file knows
  no model; ``teacher.load_pair`` builds a teacher with its tokenizer) and loads a checkpoint into it with
  ``strict=True``, after converting the released formats:

  ===============================  ==========================================================================
  MaskBit generator ``.bin``       plain state dict; old name ``token_emb.*`` is renamed to ``input_proj.*``
  MaskBit tokenizer ``.bin``       plain state dict (``quantize.codebook`` / ``bits_to_indices`` included)
  MaskGIT ``MaskGIT_*.pth``        weights under ``model_state_dict`` (plus optimiser state, iteration, ...)
  taming VQGAN ``last.ckpt``       Lightning file: weights under ``state_dict``; ``loss.*`` entries dropped
  this project's own files         ``{"format": FORMAT, "kind", "preset", "config", "model", ...}``
  ===============================  ==========================================================================

  A missing file, a file of another model or preset, or a shape mismatch is one ``UserError`` line naming the
  file, the preset and the first offending keys.  Nothing is ever partially loaded.
* ``fingerprint(*parts)``: a sha256 of strings, tensors and modules' weights, the key of the exact caches (tokenized
  real images, the teacher's reference samples): a changed weight, setting or datum gives another key.
* ``cached(folders, name, key, what)``: the first ``folder/name`` that exists, checked to hold ``key`` (a file
  under the right name but another key is refused, never used); the writers store ``key`` in the file.
* ``load_folder(folder, what, build)``: a released diffusers / transformers subfolder (``config.json`` and
  ``*.safetensors``, sharded or not, or ``*.bin``), strictly, as the text-to-image families ship.  ``.safetensors``
  is read here with the standard library: an 8-byte header length, a JSON header of names, dtypes, shapes and
  byte offsets, then raw little-endian tensors; nothing in it can run code.

Run ``python checkpoints.py PATH`` to see what a checkpoint file holds.
"""
import hashlib
import json
import math
import mmap
import os
import pickle
import re
import sys
import tempfile
import warnings

import torch

from config import PRESETS, UserError, get_preset

FORMAT = "dimo-reference/1"


def atomic_write(path, write):
    """write(f) into a temp file in the same folder, fsync, then rename: a kill leaves the old file intact."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(obj, path):
    """torch.save, written atomically (``atomic_write``)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def fingerprint(*parts):
    """sha256 hex digest of parts: str (its UTF-8), tensor (its raw bytes, any dtype) or module (its state dict's
    names and tensors in sorted order)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            digest.update(part.encode())
            continue
        items = sorted(part.state_dict().items()) if isinstance(part, torch.nn.Module) else [("", part)]
        for name, tensor in items:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cached(folders, name, key, what):
    """The dict saved under folder/name in the first of folders that has it, or None; one whose stored 'key' is not
    ``key`` (a hand-copied or truncated-name file) is refused rather than used."""
    for folder in folders:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            saved = load_checkpoint(path, what)
            if not isinstance(saved, dict) or saved.get("key") != key:
                raise UserError(f"{what} '{path}' does not hold what its name says (another key); delete it")
            return dict(saved, path=path)
    return None


def load_checkpoint(path, what="checkpoint"):
    """torch.load(weights_only=True) with one-line errors for a missing, truncated, corrupted or unsafe file."""
    if not os.path.isfile(path):
        raise UserError(f"{what} '{path}' does not exist (check the path)")
    try:
        with warnings.catch_warnings():                                 # pickle-protocol chatter is not for users
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise UserError(f"{what} '{path}' was refused without being run: it asks to call or build "
                            f"'{found.group(1)}', which a weights-only load does not allow (it could execute "
                            f"code)") from None
        raise UserError(f"{what} '{path}' is truncated or corrupted, or not a PyTorch checkpoint "
                        f"(unreadable pickle)") from None
    except Exception as e:  # noqa: BLE001 - random bytes reach the unpickler's stack code (IndexError, KeyError ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{what} '{path}' is truncated or corrupted and cannot be read ({first[:100]})") from None


def own_checkpoint(kind, preset, config, model, **extra):
    """The self-describing dict this project writes for a trained tokenizer or teacher."""
    return dict(format=FORMAT, kind=kind, preset=preset, config=config, model=model.state_dict(), **extra)


def is_tensor_dict(obj):
    return isinstance(obj, dict) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def convert_state_dict(raw, kind, family, path):
    """Any supported file layout -> (state dict with the official key names, note on what was mapped)."""
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        return raw["model"], "own checkpoint"
    if isinstance(raw, dict) and is_tensor_dict(raw.get("model_state_dict")):
        return raw["model_state_dict"], "MaskGIT training checkpoint: took 'model_state_dict'"
    if isinstance(raw, dict) and is_tensor_dict(raw.get("state_dict")):
        sd = {k: v for k, v in raw["state_dict"].items() if not k.startswith("loss.")}
        dropped = len(raw["state_dict"]) - len(sd)
        return sd, f"Lightning checkpoint: took 'state_dict', dropped {dropped} 'loss.*' entries"
    if not is_tensor_dict(raw):
        keys = list(raw)[:4] if isinstance(raw, dict) else type(raw).__name__
        raise UserError(f"'{path}' is not a {family} {kind} checkpoint: no state dict found (top-level: {keys})")
    sd, note = dict(raw), "plain state dict"
    if any(k.startswith("module.") for k in sd):                       # saved from a DDP wrapper
        sd, note = {k.removeprefix("module."): v for k, v in sd.items()}, "stripped 'module.' (DDP) prefix"
    if kind == "teacher" and family == "maskbit" and any(k.startswith("token_emb.") for k in sd):
        sd = {("input_proj." + k[len("token_emb."):] if k.startswith("token_emb.") else k): v for k, v in sd.items()}
        note += ", renamed 'token_emb.*' -> 'input_proj.*' (released MaskBit generators)"
    return sd, note


def check_fit(model, sd, path, preset, hint=None):
    """Raise one UserError line unless sd fits model exactly (same keys, same shapes)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {name}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}"
                 for name, v in (("missing", missing), ("unexpected", unexpected),
                                 ("shape mismatch (file vs preset)", shapes)) if v]
        raise UserError(f"'{path}' does not fit preset '{preset}' ({'; '.join(parts)}); "
                        f"{hint or 'pass the --teacher preset this file belongs to'}")


def load_model(kind, preset, path, build, verbose=False):
    """Build ``build(family, config)`` for a preset (or for the config stored in an own checkpoint) and load
    ``path`` into it strictly.  kind: 'teacher' | 'tokenizer'.  Returns (model in eval mode, checkpoint dict)."""
    p = get_preset(preset)
    raw = load_checkpoint(path, f"{kind} checkpoint")
    config = p["generator" if kind == "teacher" else "tokenizer"]
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        if raw.get("kind") != kind:
            raise UserError(f"'{path}' is a {raw.get('kind')} checkpoint, not a {kind} checkpoint")
        if raw.get("preset") not in PRESETS or PRESETS[raw["preset"]] is not p:
            raise UserError(f"'{path}' belongs to preset '{raw.get('preset')}', not to '{preset}'; "
                            f"pass --teacher {raw.get('preset')}")
        config = raw["config"]
    sd, note = convert_state_dict(raw, kind, p["family"], path)
    model = build(p["family"], config)
    check_fit(model, sd, path, preset)
    model.load_state_dict(sd, strict=True)
    if verbose:
        print(f"loaded {kind} '{path}' into preset '{preset}' ({note})")
    return model.eval(), raw if isinstance(raw, dict) else {}


# ----------------------------------------------------------------------------------------------------------------
# Released folders of the text-to-image families: config.json + .safetensors (or .bin).
# ----------------------------------------------------------------------------------------------------------------
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path):
    """A ``.safetensors`` file -> {name: tensor}; a truncated or malformed file is one UserError line."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise UserError(f"'{path}' is truncated or not a .safetensors file (header of {n} bytes in a file of "
                            f"{size})")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise UserError(f"'{path}' is corrupted: its .safetensors header is not JSON") from None
        data_size = size - 8 - n
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if data_size else b""
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        begin, end = info["data_offsets"]
        numel = math.prod(info["shape"])
        if dtype is None:
            raise UserError(f"'{path}': tensor '{name}' has dtype {info.get('dtype')}, which this reader does not "
                            f"know (supported: {sorted(SAFETENSORS_DTYPES)})")
        if end > data_size or end - begin != numel * dtype.itemsize:
            raise UserError(f"'{path}' is truncated or corrupted: tensor '{name}' needs bytes {begin}-{end} of "
                            f"{data_size}; download the file again")
        flat = torch.frombuffer(buffer, dtype=dtype, count=numel, offset=8 + n + begin) if numel else \
            torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(info["shape"]).clone()             # own memory: the map is closed below
    if data_size:
        buffer.close()
    return out


def write_safetensors(tensors, path):
    """{name: tensor} -> a ``.safetensors`` file, atomically (for the toy worlds and the tests)."""
    codes = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        blob = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = dict(dtype=codes[t.dtype], shape=list(t.shape), data_offsets=[offset, offset + len(blob)])
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)                                 # the format aligns the data to 8 bytes
    atomic_write(path, lambda f: f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs)))


def read_state_dict(folder, what):
    """The weights of a released subfolder: every ``*.safetensors`` in it (a sharded model is several), else the
    one ``*.bin``; the ``.bin`` through ``load_checkpoint`` (weights only)."""
    if not os.path.isdir(folder):
        raise UserError(f"{what} folder '{folder}' does not exist (pass the released folder, e.g. .../transformer)")
    names = sorted(os.listdir(folder))
    shards = [n for n in names if n.endswith(".safetensors")]
    bins = [n for n in names if n.endswith(".bin")]
    if shards:
        state = {}
        for n in shards:
            state.update(read_safetensors(os.path.join(folder, n)))
        return state
    if len(bins) == 1:
        raw = load_checkpoint(os.path.join(folder, bins[0]), f"{what} weights")
        if not is_tensor_dict(raw):
            raise UserError(f"'{os.path.join(folder, bins[0])}' holds no plain state dict")
        return raw
    raise UserError(f"{what} folder '{folder}' has no weights (*.safetensors, or one *.bin); found {names[:6]}")


def read_config(folder, what):
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{what} folder '{folder}' has no config.json (a released subfolder holds config.json and "
                        f"its weights)")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except ValueError:
            raise UserError(f"'{path}' is not valid JSON") from None


def load_folder(folder, what, build, fix=None):
    """``build(config dict)`` -> module, then the folder's weights loaded with ``strict=True``; ``fix(state)`` drops
    buffers that a library version saved but that hold no weight.  -> (module in eval mode, config)."""
    config = read_config(folder, what)
    model = build(config)
    state = read_state_dict(folder, what)
    if fix is not None:
        state = fix(state)
    check_fit(model, state, folder, what, hint="its config.json does not describe these weights")
    model.load_state_dict(state, strict=True)
    return model.eval(), config


if __name__ == "__main__":
    ckpt = load_checkpoint(sys.argv[1])
    if isinstance(ckpt, dict):
        for key, value in list(ckpt.items())[:40]:
            print(key, tuple(value.shape) if torch.is_tensor(value) else type(value).__name__)
