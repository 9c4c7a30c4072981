"""The loaded model as the API names it: its family name, OpenAI's model names mapped to it, its languages.

A server speaks one model of the family (`serve --model`). A request may name it by its family name
(settings.MODEL_NAMES: chatterbox, turbo, nano, multilingual, flash) or by one of OpenAI's names; naming
another model of the family is a 400 `model_not_found` that says which one is loaded. Only the multilingual
model takes a `language` (its SUPPORTED_LANGUAGES); the others speak English, "en". Only Chatterbox-Flash
takes `num_steps` and `cfg_scale`, and it refuses the sampling controls its block diffusion has no use for.
"""

from __future__ import annotations

from ..settings import MODEL_NAMES
from .errors import EXTRAS, bad_request

# OpenAI's model names, each mapped to the loaded model; tts-1-hd turns optimize_quality on unless the
# request says otherwise (post-processing: loudness, de-click, edge trim; the closest thing to "HD" here).
OPENAI_MODELS: dict[str, dict] = {
    "tts-1": {},
    "tts-1-hd": {"optimize_quality": True},
    "gpt-4o-mini-tts": {},
    "gpt-4o-mini-tts-2025-12-15": {},
}
DEFAULT_LANGUAGE = "en"
FLASH_EXTRAS = ("num_steps", "cfg_scale")  # Chatterbox-Flash's own decoding controls
# the extras a model has no use for, refused (400) rather than silently dropped. Turbo and Nano are not here:
# they take cfg_weight, exaggeration and min_p and ignore them with a warning, as upstream's Turbo does.
_NOT_TAKEN = {"flash": ("cfg_weight", "top_p", "min_p", "repetition_penalty")}  # block diffusion: none of these


def model_name(tts) -> str:
    """The loaded model's family name (settings.MODEL_NAMES)."""
    return tts.settings.model


def accepted_models(tts) -> dict[str, dict]:
    """Every model name a request may give, with the controls each implies (the family name first)."""
    return {model_name(tts): {}, **OPENAI_MODELS}


def model_defaults(tts, name: str) -> dict:
    """The controls implied by the request's model `name`; a 400 naming the loaded model for any other."""
    accepted = accepted_models(tts)
    if name in accepted:
        return accepted[name]
    loaded = model_name(tts)
    if name in MODEL_NAMES:
        raise bad_request(f"the model {name!r} is not loaded: this server speaks {loaded!r} (also under "
                          f"{', '.join(OPENAI_MODELS)})", "model", "model_not_found")
    raise bad_request(f"unknown model {name!r}; this server speaks {loaded!r}; models: {', '.join(accepted)}",
                      "model", "model_not_found")


def extras_taken(tts) -> tuple[str, ...]:
    """The extras (errors.EXTRAS) the loaded model takes."""
    model = model_name(tts)
    refused = _NOT_TAKEN.get(model, ()) + (() if model == "flash" else FLASH_EXTRAS)
    return tuple(name for name in EXTRAS if name not in refused)


def check_extras(tts, extras: dict) -> None:
    """A 400 naming the first of `extras` (generate_stream's controls) that the loaded model does not take."""
    taken = extras_taken(tts)
    for name in extras:
        if name not in taken:
            raise bad_request(f"{name} does not apply to the {model_name(tts)} model; it takes "
                              f"{', '.join(taken)}", name, "unsupported_parameter")


def languages(tts) -> tuple[str, ...]:
    """The language ids the loaded model speaks."""
    if model_name(tts) == "multilingual":
        return tuple(tts.get_supported_languages())
    return (DEFAULT_LANGUAGE,)


def language_args(tts, language: str | None = None) -> dict:
    """generate_stream's language argument for `language` (None: English; any case, as check_language takes
    it; a regional tag such as Home Assistant's "fr_FR" or "pt-BR" speaks its language, "fr", "pt"), checked:
    a 400 naming it."""
    asked = DEFAULT_LANGUAGE if language is None else language
    language = asked.lower().replace("_", "-").split("-")[0]
    spoken = languages(tts)
    if language not in spoken:
        raise bad_request(f"language {asked!r} is not spoken by the {model_name(tts)} model; languages: "
                          f"{', '.join(spoken)}", "language", "unsupported_language")
    return {"language_id": language} if model_name(tts) == "multilingual" else {}
