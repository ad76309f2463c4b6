"""pii stage: each type redacted and counted, checksums enforced, ordinary numbers untouched."""

import json
import re
from pathlib import Path

import polars as pl
import pytest

from lmwright.data_quality import patterns
from lmwright.tasks.curate.pii import PII_STAGE, PiiParams, apply_pii, iban_ok, luhn_ok

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run(texts, **params):
    df = pl.DataFrame(
        {"id": [str(i) for i in range(len(texts))], "text": texts, "source": "t", "uri": "u", "license": None},
        schema={"id": pl.String, "text": pl.String, "source": pl.String, "uri": pl.String, "license": pl.String},
    )
    return apply_pii(df, PiiParams.model_validate(params))


@pytest.mark.parametrize(
    "text,expected,column,n",
    [
        ("write to bob.smith+tag@mail.example.co.uk today", "write to <EMAIL> today", "pii_email", 1),
        ("call +44 20 7946 0958 now", "call <PHONE> now", "pii_phone", 1),
        ("Berlin +49 30 901820.", "Berlin <PHONE>.", "pii_phone", 1),
        ("US (555) 123-4567 or 555-123-4567", "US <PHONE> or <PHONE>", "pii_phone", 2),
        ("mobile 07700 900123, office 020 7946 0958", "mobile <PHONE>, office <PHONE>", "pii_phone", 2),
        ("txt 08000930705 or 08452810075over18's", "txt <PHONE> or <PHONE>over18's", "pii_phone", 2),
        ("host 192.168.0.1, 10.0.0.1 10.0.0.2", "host <IP>, <IP> <IP>", "pii_ip", 3),
        ("v6 2001:db8::8a2e:370:7334 and fe80::1.", "v6 <IP> and <IP>.", "pii_ip", 2),
        ("pay 4111 1111 1111 1111 or 5500-0000-0000-0004", "pay <CARD> or <CARD>", "pii_card", 2),
        ("IBAN GB82 WEST 1234 5698 7654 32 / DE89370400440532013000", "IBAN <IBAN> / <IBAN>", "pii_iban", 2),
    ],
)
def test_each_type_redacted_and_counted(text, expected, column, n):
    out = run([text])
    assert out["text"][0] == expected
    assert out[column][0] == n
    assert out["pii_count"][0] == n


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
    out = run(["bad card 4111 1111 1111 1112 and bad IBAN GB82 WEST 1234 5698 7654 33"])
    assert out["text"][0] == "bad card 4111 1111 1111 1112 and bad IBAN GB82 WEST 1234 5698 7654 33"
    assert out["pii_count"][0] == 0


ORDINARY = [
    "On 2019-07-17 (17/07/2019) at 12:30:45 we shipped Python 3.11.7.",
    "Tagged v1.2.3.4 and section 1.2.3.4.5; it cost $1,234.56 in 1999, or 4821 or 123456 units.",
    "ISBN 978-3-16-148410-0 and ISBN 0-306-40615-2; timestamp 1563364561000; std::vector; 10:30.",
]


def test_ordinary_numbers_untouched():
    out = run(ORDINARY)
    assert out["text"].to_list() == ORDINARY
    assert out["pii_count"].to_list() == [0, 0, 0]


def test_schema_reason_and_drop_above():
    out = run(["a@b.com c@d.org e@f.net", "nothing here", None], drop_above=2)
    assert out.columns[:5] == ["id", "text", "source", "uri", "license"]
    assert out.schema["pii_count"] == pl.Int64 and out.schema["reason"] == pl.String
    assert out["reason"].to_list() == ["pii_too_many", None, None]
    assert out["text"][2] is None
    assert run(["a@b.com"], email=False)["text"][0] == "a@b.com"
    assert run(["a@b.com"], placeholders={"email": "[mail]"})["text"][0] == "[mail]"
    assert PII_STAGE.name == "pii"


def test_real_emails_in_web_file_redacted_and_suite_patterns_clear():
    texts = []
    with open(DATA / "web" / "cc_warc_2019_07_cclicensed_pages.jsonl") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
    with_email = [t for t in texts if re.search(patterns.EMAIL, t)]
    assert len(with_email) >= 5
    out = run(with_email)
    assert out["pii_email"].sum() >= len(with_email)
    for t in out["text"]:
        for pat in (patterns.EMAIL, patterns.IPV4, patterns.PHONE):
            assert not re.search(pat, t), (pat, re.search(pat, t))


def test_sms_uk_numbers():
    lines = (DATA / "pii" / "sms_spam_collection.tsv").read_text().splitlines()
    eleven = [l for l in lines if re.search(r"(?<!\d)0\d{10}(?!\d)", l)][:50]
    out = run(eleven)
    # Digits glued to a dot (www.07781482378.com) are a domain name, not a number in prose.
    assert all(not re.search(r"(?<![\d.])0\d{10}(?!\d)", t) for t in out["text"])
    assert (out["pii_phone"] >= 1).sum() >= len(eleven) - 1


# Local numbers (no area code) are phones only where the words before them say so.
LOCAL_PHONES = [
    ("contact 555-0199", "contact <PHONE>"),
    ("call 0171 234567 after six", "call <PHONE> after six"),
    ("Call me on 555 0199.", "Call me on <PHONE>."),
    ("phone: 234-5678, fax: 234-5679", "phone: <PHONE>, fax: <PHONE>"),
    ("Tel. 0171/234567", "Tel. <PHONE>"),
    ("tel: (030) 123456", "tel: <PHONE>"),
    ("Tel.: 030 1234567", "Tel.: <PHONE>"),
    ("Telefon 089 123456", "Telefon <PHONE>"),
    ("Telefonnummer: 0171-2345678", "Telefonnummer: <PHONE>"),
    ("Fax-Nr. 0221 987654", "Fax-Nr. <PHONE>"),
    ("téléphone : 01 23 45 67 89", "téléphone : <PHONE>"),
    ("Tél. 01.23.45.67.89", "Tél. <PHONE>"),
    ("appelez au 04 78 12 34 56", "appelez au <PHONE>"),
    ("teléfono 91 123 45 67", "teléfono <PHONE>"),
    ("Llame al 912 345 678", "Llame al <PHONE>"),
    ("contact us at 555.0199 today", "contact us at <PHONE> today"),
    ("Phone number 5550199", "Phone number <PHONE>"),
    ("Tel. privat 0319 128452, Tel. Büro: 030 1234567", "Tel. privat <PHONE>, Tel. Büro: <PHONE>"),
]


@pytest.mark.parametrize("text,expected", LOCAL_PHONES)
def test_local_phone_after_a_phone_word_redacted(text, expected):
    out = run([text])
    assert out["text"][0] == expected
    assert out["pii_phone"][0] == expected.count("<PHONE>") == out["pii_count"][0]


# Dates, times, versions, prices, years, article numbers, counts: after a phone word or not.
NOT_PHONES = [
    "contact 2024-05-01 for details",
    "call on 17.07.2019 at 10:30",
    "Call us on 07/17/2019.",
    "contact: 2019/07/17",
    "Telefon 1999-2005 im Einsatz",
    "phone 3.11.7 release",
    "contact 18.26.17 and call on 13.19.23",
    "phone: $1,299.99",
    "Telefon 49,90 €",
    "call 3 times, 12 calls in 1999",
    "contact 12345",
    "phone model 123456-78",
    "article no. 4711-0815 and article 123456",
    "invoice 2024-0001234 paid",
    "Hotel 555-0199 and Intel 1234567",
    "fax machine sold 1,234,567 units",
    "Version 10.0.19045 was contacted by 3 users",
    "téléphone portable: 199 €",
    "el teléfono cuesta 299,99 euros",
    "order 555-0199 shipped",
]


def test_local_formats_without_phone_context_or_with_numbers_that_are_not_phones_untouched():
    out = run(NOT_PHONES)
    assert out["text"].to_list() == NOT_PHONES
    assert out["pii_count"].to_list() == [0] * len(NOT_PHONES)


def test_local_phone_counts_once_beside_other_phones():
    out = run(["call +44 20 7946 0958, mobile 0171 234567, tel 555-0199"])
    assert out["text"][0] == "call <PHONE>, mobile <PHONE>, tel <PHONE>"
    assert out["pii_phone"][0] == 3


# --- identifiers: PII in id, url and uri is hashed under the workdir's key -----------------

from lmwright.tasks.curate.license.optout import resolve_optouts  # noqa: E402
from lmwright.tasks.curate.license.policy import LicenseParams  # noqa: E402
from lmwright.tasks.curate.pii import resolve_pii  # noqa: E402
from lmwright.tasks.refresh.withdraw import apply_withdraw, consent_params  # noqa: E402

PLANTED = ["bob.smith@example.com", "alice@mail.example.org", "bob.smith%40example.com", "192.168.7.21", "+44 20 7946 0958"]


def identified(workdir: Path, **params) -> pl.DataFrame:
    df = pl.DataFrame(
        {
            "id": ["bob.smith@example.com", "alice@mail.example.org", "doc-3", "doc-4"],
            "text": ["one", "two", "three", "four"],
            "source": "crawl",
            "uri": ["mail/bob.smith@example.com/inbox.txt:1", "crawl.jsonl:2", "http://192.168.7.21/x", "crawl.jsonl:4"],
            "license": None,
            "url": [None, "https://x.org/u?to=bob.smith%40example.com", "https://x.org/a", "https://x.org/call/+44 20 7946 0958"],
        },
        schema_overrides={"license": pl.String, "url": pl.String},
    )
    return apply_pii(df, resolve_pii(PiiParams.model_validate(params), workdir))


def test_pii_in_identifiers_is_hashed_unique_and_stable(tmp_path):
    out = identified(tmp_path / "w")
    flat = " ".join(str(v) for row in out.select("id", "uri", "url").iter_rows() for v in row)
    assert not any(p in flat for p in PLANTED), flat
    assert out["id"][2:].to_list() == ["doc-3", "doc-4"] and out["uri"][1] == "crawl.jsonl:2"
    assert re.fullmatch(r"<EMAIL:[0-9a-f]{16}>", out["id"][0]) and out["id"].is_unique().all()
    assert out["uri"][0] == f"mail/{out['id'][0]}/inbox.txt:1"
    assert out["uri"][2].startswith("http://<IP:") and "<PHONE:" in out["url"][3]
    # one address, one tag: as an id and percent-encoded in a URL
    assert out["url"][1] == f"https://x.org/u?to={out['id'][0]}"
    assert out["pii_identifiers"].to_list() == [2, 2, 1, 1]
    assert out["text"].to_list() == ["one", "two", "three", "four"] and out["pii_count"].sum() == 0
    # stable within a workdir (same key), different in another one
    assert identified(tmp_path / "w").equals(out)
    assert identified(tmp_path / "other")["id"][0] != out["id"][0]
    key = (tmp_path / "w" / "secrets" / "pii_identifiers.key").read_text()
    assert key not in out.write_csv() and (tmp_path / "w" / "secrets" / "pii_identifiers.key").stat().st_mode & 0o077 == 0
    assert identified(tmp_path / "w", identifiers=[])["id"][0] == "bob.smith@example.com"


def test_identifier_key_is_in_the_fingerprint_not_the_params_dump(tmp_path):
    params = resolve_pii(PiiParams(), tmp_path)
    dumped = params.model_dump(mode="json")
    assert dumped["identifier_key_sha256"] and "identifier_key_file" not in dumped
    assert (tmp_path / "secrets" / "pii_identifiers.key").read_text() not in json.dumps(dumped)
    assert resolve_pii(PiiParams(), tmp_path) == params


def test_unresolved_key_is_a_clear_error_only_when_an_identifier_holds_pii():
    assert run(["x"])["id"].to_list() == ["0"]  # no key needed for clean ids
    df = pl.DataFrame({"id": ["bob@example.com"], "text": ["t"], "source": "s", "uri": "u", "license": None},
                      schema_overrides={"license": pl.String})
    with pytest.raises(ValueError, match=r"column 'id' holds personal data .*resolve_pii"):
        apply_pii(df, PiiParams())


def test_consent_withdrawn_by_raw_id_or_url_still_finds_the_hashed_document(tmp_path):
    (tmp_path / "optout").mkdir()
    (tmp_path / "optout" / "a.txt").write_text("id: bob.smith@example.com\nurl: https://x.org/u?to=bob.smith%40example.com\n")
    corpus = identified(tmp_path).drop("reason", "detail")
    out = apply_withdraw(corpus, consent_params(resolve_optouts(LicenseParams(), tmp_path)))
    assert out["reason"].to_list() == ["consent_withdrawn", "consent_withdrawn", None, None]
    assert out["detail"][0].endswith("@ optout/a.txt:1") and out["detail"][1].endswith("@ optout/a.txt:2")
    assert not any("bob.smith" in d for d in out["detail"][:2])
