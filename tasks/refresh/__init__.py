"""refresh: the nightly job's pieces, in the order a refresh uses them (the flow is flows/refresh.py).

- ``settings``: RefreshSettings (schedule, carbon window, replay, cross-version dedup, promotion);
- ``plan``: the lock, the base model and tokenizer a refresh continues from, the saved plan;
- ``ledger``: which source files are new or changed since the last committed refresh;
- ``withdraw``: documents whose owners withdrew consent leave the next version;
- ``previous_dedup``: new documents against every earlier version (stage ``dedup_previous``);
- ``mix``: the new tokens plus a replay sample of old ones (stage ``refresh_mix``);
- ``versions``: the immutable corpus versions and how one is committed.
"""
