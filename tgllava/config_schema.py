"""The schema of the model config: the flat dict of sizes the C core is created from (tg_config).

The one list of fields is TG_CONFIG_FIELDS in csrc/config_fields.h; it generates the C struct,
the extension's parser of the dict and its complete export (_C.Model.config), and reaches Python
through _C.config_fields().  FIELDS holds it here, in tg_config order, and check() is what
loader.build_config runs on the dict it produced: a key that is not a field, or a field its modules
need that is missing, is a bug in tgllava (TgError); a value of the wrong type is a ShapeError
(the C parser raises the same).  A field is needed "always", when "has_fom or has_dp" (the CLIP
text tower), when "has_fom" (the Q-former) or when "has_dp" (the perceiver); one that is not needed
may be left out and is then 0 in the C core (a plain LLaVA-1.5 has no t_, q_ or p_ field).
"""
from collections import namedtuple

import numpy as np

from . import _C
from .errors import ShapeError, TgError

Field = namedtuple("Field", "name type meaning needed")

FIELDS = {row[0]: Field(*row) for row in _C.config_fields()}


def is_needed(field, config):
    """Whether `field` (a Field or a name) must be in `config`, given its has_fom / has_dp flags."""
    f = FIELDS[field] if isinstance(field, str) else field
    fom, dp = bool(config.get("has_fom")), bool(config.get("has_dp"))
    return {"always": True, "has_fom or has_dp": fom or dp, "has_fom": fom, "has_dp": dp}[f.needed]


def _type_ok(kind, value):
    if isinstance(value, (bool, np.bool_)):
        return False
    if kind == "int":
        return isinstance(value, (int, np.integer))
    return isinstance(value, (int, float, np.integer, np.floating))


def check(config, where="build_config"):
    """Check a config dict against the schema; returns it.  `where` names the producer in messages."""
    unknown = sorted(str(k) for k in config if k not in FIELDS)
    if unknown:
        raise TgError(f"{where} produced config keys that are not tg_config fields: {', '.join(unknown)} "
                      "(the schema is csrc/config_fields.h, tgllava._C.config_fields())")
    missing = [name for name, f in FIELDS.items() if name not in config and is_needed(f, config)]
    if missing:
        raise TgError(f"{where} left out config fields the C core needs: {', '.join(missing)} "
                      "(the schema is csrc/config_fields.h, tgllava._C.config_fields())")
    for name, value in config.items():
        kind = FIELDS[name].type
        if not _type_ok(kind, value):
            raise ShapeError(f"config field {name} must be {'an integer' if kind == 'int' else 'a number'}, "
                             f"got {value!r}")
    return config
