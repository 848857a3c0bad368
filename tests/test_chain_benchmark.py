"""``benchmarks/chain_benchmark.py``'s method wrappers: the weights a row ran, the ablation switch."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import chain_benchmark as cb  # noqa: E402


def _sphere(shp=(24, 24, 24)):
    g = np.meshgrid(*[np.arange(n) - n / 2 for n in shp], indexing="ij")
    r = np.sqrt(sum(x ** 2 for x in g))
    mask = r < 9
    field = (0.01 * np.exp(-r ** 2 / 20.0) * mask).astype(np.float32)
    return field, mask


def test_weights_used_records_each_data_fits_shipped_file_and_survives_the_ablation():
    from qsmprep.dl import inference, weights

    field, mask = _sphere()
    args = (field, mask, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))
    with cb.weights_used() as seen:
        on = inference.invert_nsidl(*args, device="cpu", data_fit="robust")
        with cb.network_off():
            off = inference.invert_nsidl(*args, device="cpu", data_fit="robust")
        inference.invert_nsidl(*args, device="cpu", data_fit="robust", weights="chain")
    assert seen == [weights.SHIPPED_SHA256["nsidl_v2.pt"], weights.SHIPPED_SHA256["nsidl_v3.pt"]]
    assert inference._cached_model.__name__ == "_cached_model"  # both switches restored
    assert np.abs(on - off)[mask].max() > 0  # the network's output mattered, and the ablation removed it
