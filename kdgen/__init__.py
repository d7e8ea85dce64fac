"""kdgen: knowledge distillation in generations with tolerant teachers (Yang et al., AAAI 2019).

Python API (see docs/guide/api.md):

    import kdgen
    data = kdgen.bundle_from_tensors(train_x, train_y, test_x, test_y)
    rows = kdgen.train_generations(lambda: MyNet(), data, kdgen.Config(seeds=[0, 1]))
    print(kdgen.summary_text(rows))
"""

__version__ = "0.1.0"

from kdgen.api import bundle_from_tensors, summary_text, train_generations  # noqa: E402
from kdgen.config import Config, load_config  # noqa: E402
from kdgen.data.base import AugmentSpec, DataBundle  # noqa: E402
from kdgen.running.inference import Classifier, load  # noqa: E402

__all__ = ["AugmentSpec", "Classifier", "Config", "DataBundle", "bundle_from_tensors", "load", "load_config",
           "summary_text", "train_generations", "__version__"]
