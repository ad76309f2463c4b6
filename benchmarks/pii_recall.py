"""PII recall and false positives of the pii stage, against its previous version.

A hold-out of planted PII: real English sentences (C4 sample in ../shared/data) with one planted
item each, drawn with a fixed seed from formats the unit tests do not list verbatim: e-mails,
international, North American and UK phones, local phones after a phone word (English, German,
French, Spanish), IPv4/IPv6, Luhn-valid cards, mod-97-valid IBANs. Recall = planted items
replaced by a placeholder. False positives: the same sentences with look-alikes that are not PII
(dates, years, versions, prices, article and order numbers, some after "call" or "contact"),
counted as documents the stage changed.

    python benchmarks/pii_recall.py [--docs 4000] [--seed 20261130] [--baseline <git commit>]

The baseline's tasks/curate/pii.py is read from git (default: the commit before local phones).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "web" / "c4_en_sample_olmo.jsonl"
BASELINE = "fc007e8"

LOCAL_WORDS = ["call", "Call", "phone", "Phone:", "tel.", "Tel.:", "contact", "Contact us on", "fax", "Fax-Nr.",
               "Telefon", "Telefon:", "Tel. privat", "téléphone :", "Tél.", "appelez au", "teléfono", "Llame al",
               "call me at", "phone number", "ring the hotline"]


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def luhn_complete(prefix: str) -> str:
    total = 0
    for i, c in enumerate(reversed(prefix + "0")):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return prefix + str((10 - total % 10) % 10)


def iban(rng: random.Random) -> str:
    bban = digits(rng, 18)
    num = int("".join(str(int(c, 36)) for c in bban + "DE00"))
    return f"DE{98 - num % 97:02d}{bban}"


def local_phone(rng: random.Random) -> str:
    shape = rng.randrange(6)
    if shape == 0:
        return f"{digits(rng, 3)}-{digits(rng, 4)}"
    if shape == 1:
        return f"0{digits(rng, 3)} {digits(rng, 6)}"
    if shape == 2:
        return f"0{digits(rng, 2)}/{digits(rng, 7)}"
    if shape == 3:
        return " ".join(["0" + digits(rng, 1)] + [digits(rng, 2) for _ in range(4)])
    if shape == 4:
        return f"({digits(rng, 3)}) {digits(rng, 6)}"
    return f"{digits(rng, 2)} {digits(rng, 3)} {digits(rng, 2)} {digits(rng, 2)}"


def planted(rng: random.Random) -> tuple[str, str]:
    """(type, text to plant) for one PII item."""
    kind = rng.choice(["email", "phone_intl", "phone_nanp", "phone_uk", "phone_local", "ip", "card", "iban"])
    if kind == "email":
        return kind, f"write to {rng.choice(['anna', 'j.doe', 'info', 'max_m'])}{rng.randrange(99)}@{rng.choice(['mail.example.com', 'web.de', 'uni-x.edu'])}"
    if kind == "phone_intl":
        return kind, f"ring +{rng.choice(['44 20', '49 30', '33 1', '34 91'])} {digits(rng, 4)} {digits(rng, 4)}"
    if kind == "phone_nanp":
        return kind, f"at ({rng.randrange(2, 10)}{digits(rng, 2)}) {digits(rng, 3)}-{digits(rng, 4)}"
    if kind == "phone_uk":
        return kind, f"on 07{digits(rng, 3)} {digits(rng, 6)}"
    if kind == "phone_local":
        return kind, f"{rng.choice(LOCAL_WORDS)} {local_phone(rng)}"
    if kind == "ip":
        return kind, f"host {rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    if kind == "card":
        number = luhn_complete(rng.choice("2345") + digits(rng, 14))
        return kind, "card " + " ".join(number[i:i + 4] for i in range(0, 16, 4))
    return kind, f"IBAN {iban(rng)}"


def look_alike(rng: random.Random) -> str:
    """Numbers that are not PII, some after a phone word."""
    word = rng.choice(["call on", "contact", "Telefon", "phone model", "order", "article no.", "version", "price", ""])
    value = rng.choice([
        f"{rng.randrange(1990, 2030)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        f"{rng.randrange(1, 29):02d}.{rng.randrange(1, 13):02d}.{rng.randrange(1990, 2030)}",
        f"{rng.randrange(1, 13):02d}/{rng.randrange(1, 29):02d}/{rng.randrange(1990, 2030)}",
        f"{rng.randrange(1, 20)}.{rng.randrange(30)}.{rng.randrange(30)}",
        f"${rng.randrange(1, 9)},{digits(rng, 3)}.{digits(rng, 2)}",
        f"{rng.randrange(1990, 2010)}-{rng.randrange(2010, 2030)}",
        f"{rng.randrange(1, 99)} units",
        f"{digits(rng, 4)}",
    ])
    return f"{word} {value}".strip()


def load_pii(source: str, name: str):
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def score(module, frame: pl.DataFrame, kinds: list[str], clean: pl.DataFrame) -> tuple[dict[str, tuple[int, int]], int, float]:
    params = module.PiiParams(identifiers=[]) if "identifiers" in module.PiiParams.model_fields else module.PiiParams()
    start = time.perf_counter()
    out = module.apply_pii(frame, params)
    seconds = time.perf_counter() - start
    per: dict[str, tuple[int, int]] = {}
    for kind, before, after in zip(kinds, frame["text"], out["text"]):
        hit, n = per.get(kind, (0, 0))
        per[kind] = (hit + (after.count("<") > before.count("<")), n + 1)
    changed = module.apply_pii(clean, params)
    false_pos = int((changed["text"] != clean["text"]).sum())
    return per, false_pos, seconds


def frame_of(texts: list[str]) -> pl.DataFrame:
    n = len(texts)
    return pl.DataFrame({"id": [f"d{i}" for i in range(n)], "text": texts, "source": ["b"] * n, "uri": ["u"] * n,
                         "license": [None] * n}, schema_overrides={"license": pl.String})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--baseline", default=BASELINE)
    ap.add_argument("--seed", type=int, default=20261130)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    sentences = [s.strip() for line in DATA.read_text().splitlines() for s in json.loads(line)["text"].split(".")
                 if 30 < len(s.strip()) < 200 and "@" not in s]
    kinds, texts, clean = [], [], []
    for _ in range(args.docs):
        a, b = rng.choice(sentences), rng.choice(sentences)
        kind, item = planted(rng)
        kinds.append(kind)
        texts.append(f"{a}. {item}. {b}.")
        clean.append(f"{a}. {look_alike(rng)}. {b}.")
    baseline_src = subprocess.run(["git", "-C", str(ROOT), "show", f"{args.baseline}:tasks/curate/pii.py"],
                                  capture_output=True, text=True, check=True).stdout
    results = {
        f"baseline {args.baseline}": score(load_pii(baseline_src, "pii_baseline"), frame_of(texts), kinds, frame_of(clean)),
        "current": score(load_pii((ROOT / "tasks" / "pii.py").read_text(), "pii_current"), frame_of(texts), kinds, frame_of(clean)),
    }
    print(f"{args.docs} documents with one planted item each; {args.docs} with look-alikes only (seed {args.seed})")
    for name, (per, false_pos, seconds) in results.items():
        hits, total = sum(h for h, _ in per.values()), sum(n for _, n in per.values())
        print(f"\n{name}: recall {hits / total:.2%} ({hits}/{total}); look-alike documents changed: {false_pos}; "
              f"apply_pii on the planted documents {seconds:.2f} s")
        for kind in sorted(per):
            h, n = per[kind]
            print(f"  {kind:12s} {h:5d}/{n:<5d} {h / n:.1%}")


if __name__ == "__main__":
    main()
