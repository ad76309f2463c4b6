"""What a source is (``SourceSpec``), what one unit of reading is (``SourceFile``), and what a reader yields:
a ``Record`` (a document as read) or a ``Rejected`` (something that could not become one, with its reason)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# The default corpus depends on the Python build only, so a `pip install` changes no cache key.
BUILTIN_PYDOCS = "builtin:pydocs"  # the standard library's docstrings
# Opt-in: changes with every install. Docstrings and long descriptions of the installed packages (tens of MB).
BUILTIN_PYDOCS_PACKAGES = "builtin:pydocs-packages"
BUILTINS = (BUILTIN_PYDOCS, BUILTIN_PYDOCS_PACKAGES)
TEXT_SUFFIXES = (".txt", ".md", ".text", ".markdown", ".rst")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson", ".json.gz", ".jsonl.gzip")
# Web archives: WARC (responses with HTML) and WET (Common Crawl's extracted text), plain or gzipped.
WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz", ".warc.wet", ".warc.wet.gz")
Format = Literal["auto", "text", "jsonl", "parquet", "csv", "warc"]
FileFormat = Literal["text", "jsonl", "parquet", "csv", "warc", "pydocs"]  # "pydocs": the builtin corpus only


class SourceSpec(BaseModel):
    """One input: a file, a directory, an fsspec URL, or ``builtin:pydocs``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="File, directory, fsspec URL (s3://, https://, memory://...) or builtin:pydocs.")
    name: str | None = Field(None, description="Source label stored in the `source` column; default: the file or directory name.")
    format: Format = Field("auto", description="Reader to use; auto picks by file suffix.")
    text_field: str = Field("text", description="JSONL/Parquet/CSV field holding the document text.")
    id_field: str | None = Field("id", description="Field holding a record's own id; kept as the document id when present.")
    license: str | None = Field(None, description="License declared for every document of this source (SPDX id); unknown stays null.")
    files: list[str] | None = Field(None, description="Only these files of a directory source (paths relative to it).")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: object) -> object:
        return {"path": value} if isinstance(value, str) else value

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.path in BUILTINS:
            return self.path.removeprefix("builtin:")
        return Path(self.path.rstrip("/")).name or self.path


# A source as a user gives it: a plain path string or the full object. SourceSpec already turns a
# string into {"path": ...}; this makes the JSON schema say so too, so the Prefect form and the
# server's parameter check accept "/data/udhr" (they validate against the schema, not the model).
SourceInput = Annotated[SourceSpec, BeforeValidator(lambda value: value, json_schema_input_type=str | SourceSpec)]


@dataclass(frozen=True)
class Record:
    """A document as read: text plus where it came from."""

    text: str
    position: str  # e.g. "L12" (line) or "row=7": the uri fragment
    own_id: str | None = None
    license: str | None = None
    url: str | None = None  # where a crawled record came from (for opt-outs by domain or URL)
    # WARC provenance: the capture's date, the payload's media type, the record's own id.
    warc_date: str | None = None
    content_type: str | None = None
    warc_record_id: str | None = None


@dataclass(frozen=True)
class Rejected:
    """Something that could not become a document; kept with its reason."""

    reason: str
    position: str
    detail: str
    text: str = ""


@dataclass(frozen=True)
class SourceFile:
    """One unit of ingest work: a file of a source (or a slice of the builtin corpus)."""

    source: SourceSpec
    path: str  # fsspec URL or local path; for builtin:pydocs a group key
    relpath: str  # path inside the source, used for stable ids
    size: int
    mtime: float
    format: FileFormat


def suffix_format(path: str) -> FileFormat | None:
    """The reader a file's suffix asks for; None: not a format ingest reads."""
    lower = path.lower()
    if lower.endswith(WARC_SUFFIXES):
        return "warc"
    if lower.endswith(TEXT_SUFFIXES):
        return "text"
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith((".csv", ".tsv", ".csv.gz")):
        return "csv"
    return None
