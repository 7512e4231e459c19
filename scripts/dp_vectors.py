#!/usr/bin/env python3
"""Reference (epsilon, delta) values of the Poisson-subsampled Gaussian mechanism from Google's
dp-accounting (PyPI), for tests/common/privacy/rdp_accountant_test.cc.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install dp-accounting
    /tmp/v/bin/python scripts/dp_vectors.py > tests/common/privacy/rdp_vectors.txt

Each line: sampling_rate noise_multiplier steps delta epsilon (RdpAccountant with its default
orders, the tight RDP-to-DP conversion).
"""
import importlib.metadata
import logging

import dp_accounting
from dp_accounting import rdp


def main():
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orders it leaves out, said per call.
    version = importlib.metadata.version("dp-accounting")
    print(f"# dp-accounting {version}: q sigma steps delta epsilon")
    for q in (0.001, 0.01, 0.05, 0.1, 0.5, 1.0):
        for sigma in (0.5, 0.8, 1.0, 2.0, 5.0):
            for steps in (1, 10, 100, 1000):
                for delta in (1e-5, 1e-7):
                    accountant = rdp.RdpAccountant()
                    event = dp_accounting.PoissonSampledDpEvent(
                        q, dp_accounting.GaussianDpEvent(sigma))
                    accountant.compose(event, steps)
                    eps = accountant.get_epsilon(delta)
                    print(f"{q!r} {sigma!r} {steps} {delta!r} {float(eps)!r}")


if __name__ == "__main__":
    main()
