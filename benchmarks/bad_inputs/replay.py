"""Replay the bad-input corpus through the command line and count the clean errors.

Each case of ``corpus.json`` runs as ``python -m gradleak ARGV`` in a fresh temporary folder (its working
directory, ``{tmp}`` in the argv), after its ``setup`` maker wrote the files it needs. A case is *clean* when
the command exits 2, prints exactly one ``gradleak...: error:`` line and no traceback, and leaves every file
outside ``{tmp}/out`` as it was. Writes ``results.json`` and ``results.md`` beside this script.

    python -m benchmarks.bad_inputs.replay [--timeout 120] [--only ID ...]
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from gradleak.auditing import DEFAULT_ATTACK

HERE = Path(__file__).resolve().parent
ERROR_LINE = re.compile(r"^gradleak(?: [\w-]+)?: error: ", re.MULTILINE)


# -- makers of the files a case reads -----------------------------------------------------------------------
def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims ``width`` × ``height`` pixels (CRC fixed)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def image_folder(root: Path, images: dict[str, bytes]) -> None:
    for name, data in images.items():
        (root / "cls").mkdir(parents=True, exist_ok=True)
        (root / "cls" / name).write_bytes(data)


def cli(tmp: Path, *argv: str) -> None:
    subprocess.run([sys.executable, "-m", "gradleak", *argv], cwd=tmp, check=True, capture_output=True, timeout=300)


def mlp_weights(tmp: Path, name: str, fill: float | None) -> None:
    from safetensors.torch import save_file

    from gradleak.models import build_model

    state = build_model("mlp", 10, (1, 8, 8)).state_dict()
    save_file({k: v.fill_(fill) if fill is not None else v for k, v in state.items()}, str(tmp / name))


def foreign_safetensors(path: Path) -> None:
    """A valid safetensors file that is no gradleak file of any kind."""
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(path), metadata={"gradleak": '{"format": 9}'})


MAKERS: dict[str, Callable[[Path], None]] = {
    "afile": lambda tmp: (tmp / "afile").write_text("keep me"),
    "png_bomb": lambda tmp: image_folder(tmp / "bomb", {"0.png": png_claiming(100000, 100000)}),
    "two_8000": lambda tmp: image_folder(tmp / "big", {f"{i}.png": png_claiming(8000, 8000) for i in range(2)}),
    "png_9000": lambda tmp: image_folder(tmp / "huge", {"0.png": png_claiming(9000, 9000)}),
    "junk_images": lambda tmp: image_folder(tmp / "junk", {"0.png": b"not a png", "1.jpg": b""}),
    "garbage_files": lambda tmp: [
        (tmp / "garbage.safetensors").write_bytes(b"garbage"),
        (tmp / "empty.safetensors").write_bytes(b""),
        (tmp / "w.pth").write_bytes(pickle.dumps({"x": 1})),
    ],
    "foreign_safetensors": lambda tmp: foreign_safetensors(tmp / "foreign.safetensors"),
    "nan_weights": lambda tmp: mlp_weights(tmp, "nan.safetensors", float("nan")),
    "corrupt_checkpoint": lambda tmp: [
        (tmp / "ck").mkdir(),
        (tmp / "ck" / f"{DEFAULT_ATTACK}.checkpoint.safetensors").write_bytes(b"garbage"),  # the audit's attack
    ],
    "checkpoint_of_seed_1": lambda tmp: cli(
        tmp,
        "audit",
        "--model",
        "mlp",
        "--data",
        "digits",
        "--image-size",
        "8",
        "--iterations",
        "2",
        "--quiet",
        "--seed",
        "1",
        "--checkpoint-dir",
        str(tmp / "ck"),
        "--out",
        str(tmp / "setup"),
    ),  # fmt: skip
}


# -- one case -------------------------------------------------------------------------------------------------
def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def replay(case: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="gradleak-bad-") as d:
        tmp = Path(d)
        if "setup" in case:
            MAKERS[case["setup"]](tmp)
        argv = [a.replace("{tmp}", str(tmp)) for a in case["argv"]]
        if "prelude" in case:
            code = f"{case['prelude']}; from gradleak.cli import main; sys.exit(main({argv!r}))"
            command = [sys.executable, "-c", "import sys; " + code]
        else:
            command = [sys.executable, "-m", "gradleak", *argv]
        before = tree(tmp)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=timeout)
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, err = None, (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else ""
        seconds = time.perf_counter() - t0
        after = tree(tmp)
    outside = sorted(
        k
        for k in set(before) | set(after)
        if not (k == "out" or k.startswith("out/")) and before.get(k) != after.get(k)
    )
    errors = ERROR_LINE.findall(err)
    problems = []
    if rc != 2:
        problems.append("timed out" if rc is None else f"exit {rc}")
    if "Traceback" in err:
        problems.append("traceback")
    if len(errors) != 1:
        problems.append(f"{len(errors)} error lines")
    if outside:
        problems.append(f"touched outside --out: {outside[:5]}")
    last = next((line for line in reversed(err.splitlines()) if ERROR_LINE.match(line)), err.strip()[-200:])
    last = last.replace(str(tmp), "{tmp}")
    return {
        "id": case["id"],
        "kind": case["kind"],
        "source": case["source"],
        "clean": not problems,
        "problems": problems,
        "exit": rc,
        "message": last[:300],
        "seconds": round(seconds, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    ap.add_argument("--only", nargs="*", help="case ids to replay (default: all)")
    a = ap.parse_args()
    cases = json.loads((HERE / "corpus.json").read_text())["cases"]
    cases = [c for c in cases if not a.only or c["id"] in a.only]
    rows = []
    for c in cases:
        rows.append(replay(c, a.timeout))
        r = rows[-1]
        print(f"{'clean' if r['clean'] else 'FAIL '} {r['id']:<45} {'; '.join(r['problems']) or r['message'][:70]}")
    clean = sum(r["clean"] for r in rows)
    print(f"{clean} / {len(rows)} bad inputs give a clean error")
    (HERE / "results.json").write_text(json.dumps({"clean": clean, "total": len(rows), "cases": rows}, indent=1))
    lines = [
        "# Bad-input corpus replayed through the command line",
        "",
        f"**{clean} / {len(rows)}** give a clean error: exit 2, one `gradleak: error:` line, no traceback, "
        "nothing written outside `--out`. Regenerate with `python -m benchmarks.bad_inputs.replay`.",
        "",
        "Observation headers, capture stores and priors read through the API are fuzzed in "
        "`tests/test_untrusted_files.py`; the cases here are those the command line reaches.",
        "",
        "| case | kind | from | clean | exit | message or problems |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        text = "; ".join(r["problems"]) or r["message"]
        text = text.replace("|", "\\|")
        lines.append(
            f"| {r['id']} | {r['kind']} | {r['source']} | {'yes' if r['clean'] else '**no**'} | {r['exit']} | {text} |"
        )
    (HERE / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
