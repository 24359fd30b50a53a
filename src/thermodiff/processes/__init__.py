"""The forward processes, each as an object that carries what features would otherwise
branch on: its noise, q(x_t | x_0), the posterior, the prior and its KL, the fixed
decoder, L_null, the checks of its data, and ``supports``, the set of capabilities a
feature asks for instead of testing the process's name.

Every process answers (see ``gaussian.GaussianProcess`` and ``binomial.BinomialProcess``):

    name, supports, binary (the data are bits)
    noise(shape, generator, device)            eps ~ N(0, I) | u ~ U[0, 1)
    q_sample(x0, abar_t, noise)                x_t ~ q(x_t | x_0)
    forward(x_s, abar_s, abar_t) -> Kernel     q(x_t | x_s)
    posterior(x_t, x0, abar_s, abar_t)         q(x_s | x_t, x_0)
    prior(shape, device), log_prior(x), prior_kl(x0, abar_T)
    fixed_decoder(x_1, abar_1), fixed_decoder_nll(x0, abar_1)      paper App. B.2
    entropy_q_t_given_0(abar_t, n_dims)
    register_buffers(model), fit_data(model, y), null_log_likelihood(model, x)
    check_data(y, what), check_schedule(continuous, schedule)
"""

from __future__ import annotations

from ..errors import ConfigError
from .binomial import BinomialProcess
from .gaussian import GaussianProcess

PROCESSES = {"gaussian": GaussianProcess(), "binomial": BinomialProcess()}


def get(name: str):
    """The process object of a name (``gaussian``, ``binomial``); a ConfigError otherwise."""
    if name not in PROCESSES:
        raise ConfigError(f"unknown process kind {name!r}; choose one of {', '.join(PROCESSES)}")
    return PROCESSES[name]
