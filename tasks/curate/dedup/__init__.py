"""dedup: exact (normalized-text hash) and near-duplicate (MinHash LSH) removal.

Dedup is global, so it runs in three cached steps that share the stage's output directory
``<workdir>/datasets/dedup/<fingerprint>/`` (``stage.run_dedup`` wires them):

1. ``stage.compute_signatures`` (mapped over the input shards) writes
   ``signatures/<shard>.parquet`` (``signatures.signature_frame``): id, shard, row, 64-bit hash
   of the normalized text, shingle count, the MinHash signature (``minhash``: fixed-size array
   column, bit-identical to datasketch), one 64-bit key per LSH band and (with
   ``verify="jaccard"``) the document's sorted distinct 32-bit shingle hashes (``shingles``, a
   uint32 list). Marker: ``signatures/<shard>.json``.
2. ``stage.find_clusters`` (one task) links exact duplicates (same hash) and verified
   near-duplicates (same key in some band, then the exact Jaccard of the two shingle-hash
   sets, read back only for candidate documents, >= ``threshold``; or with
   ``verify="signature"`` the fraction of equal signature values), takes connected
   components and writes ``clusters.parquet`` (id, dup_cluster, dup_of, reason). Marker:
   ``clusters.json``.
3. the ``dedup`` ShardStage (``stage.apply_dedup`` per shard) joins each shard with the
   clusters; ``finalize_stage`` writes stats.json and the manifest.

Which document is kept: in each cluster, the first in corpus order, i.e. the smallest
(shard position in the source manifest, row in shard). The rule does not depend on the
order pairs are found in, so reruns and other task runners pick the same document.
Every rejected document's ``dup_of`` (and every document's ``dup_cluster``) is the id of
its cluster's kept document. ``reason`` is ``dedup_exact`` when the document's normalized
text equals the kept document's, else ``dedup_near`` (it may be linked to the kept
document through a chain of near-duplicates).

Memory: signatures are fixed-size uint32 arrays (448 B/document at 112 permutations) and
stay on disk. ``find_clusters`` runs one of two engines (``DedupParams.engine``), both giving
the same clusters.parquet as ``clusters.cluster_frame`` (the in-memory reference, which holds
every signature and band key: 560 B/document of data, ~2.5 KB/document peak RSS measured):

- ``polars`` (default, ``spill.cluster_files``): a shuffle through sorted runs on disk under
  ``<stage dir>/spill-<random>/`` (one per run: two runs never share it); bounded memory
  (~8 B/document plus ~0.5 GB of buffers). Measured to 8M documents: benchmarks/README.md
  (dedup_scale.py).
- ``dask`` (``dask_engine.cluster_files_dask``): the same steps as a dask.dataframe graph on
  the running distributed client or the threaded scheduler.

The modules, from the bottom up: ``minhash`` (batched signatures), ``params`` (the stage's
parameters and reasons), ``signatures`` (one shard's signature rows; reading them back),
``clusters`` (candidate pairs, verification, components, the in-memory reference, writing
clusters.parquet), ``spill`` and ``dask_engine`` (the two bounded engines), ``stage`` (the
Prefect tasks and the flow-side ``run_dedup``).
"""
