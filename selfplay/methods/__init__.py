"""The methods registry: every training method's module, one line each in `METHODS`.

A method module (selfplay/methods/<name>.py) declares what makes the method: its losses and
their `LossSpec`s, its pair rules (`PairRule`: builder, target columns, responses, and for DRIFT
the stages that replace generate/annotate/pairs and the prompt records). `LOSSES` (train.loss)
and `PAIR_RULES` (pairs.type) merge them; a name declared twice fails at import. Adding a method
is one module and one line here.
"""

from selfplay.methods import asft, curriculum, dpo, drift, selfie, sppo, tpo, ultrafeedback
from selfplay.methods.base import Method

METHODS: tuple[Method, ...] = (
    sppo.METHOD,
    dpo.METHOD,
    curriculum.METHOD,
    drift.METHOD,
    selfie.METHOD,
    tpo.METHOD,
    asft.METHOD,
    ultrafeedback.METHOD,
)


def merged(methods: tuple[Method, ...], kind: str) -> dict:
    """{name: spec or rule} of every method's `kind` ("losses" or "pair_rules"), in METHODS order."""
    registry, owner = {}, {}
    for method in methods:
        for name, value in getattr(method, kind).items():
            if name in registry:
                raise ValueError(f"{kind} name {name!r} is declared by both methods {owner[name]!r} and {method.name!r}")
            registry[name], owner[name] = value, method.name
    return registry


LOSSES = merged(METHODS, "losses")
PAIR_RULES = merged(METHODS, "pair_rules")
