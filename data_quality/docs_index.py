"""A Data Docs index builder that keeps every page already on disk (imports GX: load lazily).

GX's default index builder deletes every page whose validation result is not in the
context's result store. Our context is ephemeral and holds only what this process
published, so the default would delete the pages of earlier runs (say, yesterday's
failed stage) whenever a new one is written. This one leaves them on disk.
"""

from __future__ import annotations

from typing import Any

from great_expectations.render.renderer.site_builder import DefaultSiteIndexBuilder


class KeepPagesSiteIndexBuilder(DefaultSiteIndexBuilder):
    def build(self, skip_and_clean_missing: bool = True, build_index: bool = True) -> Any:
        return super().build(skip_and_clean_missing=False, build_index=build_index)
