"""genkit-gumbel-sampler: a genkit plugin that adds the ``gumbel`` sampler.

Select it per request with ``sampler="gumbel"`` (``--sampler gumbel`` on the
command line) and set its one option through ``sampler_options``::

    gen.generate("ROMEO:", do_sample=True, sampler="gumbel", sampler_options={"tau": 0.8}, seed=0)

genkit imports this module through the ``gumbel`` entry point of the ``genkit``
group (see pyproject.toml) and calls :func:`register_samplers` once, when the
plugin registry is built.
"""

from __future__ import annotations

import genkit
from genkit.specs import SamplerSpec
from genkit_gumbel_sampler.sampler import GumbelSampler, build_gumbel, check_tau

__all__ = ["GumbelSampler", "build_gumbel", "check_tau", "register_samplers"]

SAMPLER_NAME = "gumbel"


@genkit.hookimpl
def register_samplers(register):
    register(
        SamplerSpec(
            SAMPLER_NAME,
            build_gumbel,
            description="Gumbel-max trick: argmax(scores / tau + Gumbel noise), with the option tau > 0",
        )
    )
