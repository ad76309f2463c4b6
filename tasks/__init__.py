# Before any submodule imports torch: OpenMP reads its settings once, when torch loads it.
from lmwright.tasks.core.cpu_threads import apply_cpu_defaults

apply_cpu_defaults()
