"""A template's parameters: each value checked against its declaration, and how it
reaches the job (an exported ``PARAM_<NAME>``; files as ``FILE_<NAME>``)."""

import math
import re

DEFAULT_STRING_MAX_LENGTH = 4096


def coerce_parameter(param, value):
    """The checked value of one parameter (ValueError saying why not)."""
    kind = param["type"]
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,30}\s*", value):
            value = int(value)
        if not isinstance(value, int):
            raise ValueError("must be an integer")
    elif kind == "float":
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", value):
            value = float(value)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError("must be a number")
        value = float(value)
    elif kind == "bool":
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            value = value.strip().lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
    elif kind == "choice":
        choices = param.get("choices", [])
        match = [c for c in choices if c == value and type(c) is not bool] or \
                [c for c in choices if str(c) == str(value) and not isinstance(value, (bool, dict, list))]
        if not match:
            raise ValueError("must be one of " + ", ".join(str(c) for c in choices))
        value = match[0]
    elif kind == "string":
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if "\x00" in value:
            raise ValueError("must not contain a NUL character")
        limit = param.get("max_length", DEFAULT_STRING_MAX_LENGTH)
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters long")
        if "pattern" in param and not re.fullmatch(param["pattern"], value):
            raise ValueError(f"must match {param['pattern']}")
    if kind in ("int", "float"):
        if "min" in param and value < param["min"]:
            raise ValueError(f"must be at least {param['min']}")
        if "max" in param and value > param["max"]:
            raise ValueError(f"must be at most {param['max']}")
    return value


def environment_value(value):
    """How a checked value is written into the job's environment."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parameter_env_name(name):
    return "PARAM_" + name.upper()


def file_env_name(name):
    return "FILE_" + name.upper()
