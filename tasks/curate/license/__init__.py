"""license: consent and copyright, as a shard stage.

* ``spdx``    what license a record declares, as an SPDX id or expression
* ``policy``  which licenses a run accepts for which use (``LicenseParams``), and the card's summary of it
* ``optout``  the registry of withdrawn consent: read, snapshot, match
* ``stage``   ``LICENSE_STAGE``: consent first, then the policy, one reason per dropped document
"""
