"""The voice endpoints: list, upload (multipart: name + file), delete.

An upload is decoded and checked (clips.decode_clip), turned into a voice once and stored atomically by
the VoiceLibrary: a failure at any step stores nothing.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from ..voices import check_voice_name
from .auth import require_api_key
from .catalog import VoiceCatalog
from .clips import clip_wav, decode_clip
from .errors import APIError, bad_request

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.get("/v1/audio/voices", summary="The voices a request may name")
async def list_voices(request: Request) -> dict:
    return request.app.state.catalog.listing()


@router.post("/v1/audio/voices", status_code=201, summary="Add a voice from a reference clip")
async def add_voice(request: Request, name: str = Form(..., description="1-64 letters, digits, space, _ . -"),
                    file: UploadFile = File(..., description="a clip of the voice (10 s or more of clean speech "
                                                             "is best; the first 30 s are used)"),
                    overwrite: bool = Form(False)) -> dict:
    catalog: VoiceCatalog = request.app.state.catalog
    library = catalog.require_library()
    name = _name(name)
    limit = request.app.state.options.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise APIError(413, f"the clip is larger than {limit} bytes", param="file", code="file_too_large")
    if not overwrite and name in library:
        raise APIError(409, f"a voice named {name!r} exists already (send overwrite=true to replace it)",
                       param="name", code="voice_exists")
    try:
        wav, rate = await run_in_threadpool(decode_clip, data)
        await run_in_threadpool(library.add_clip, name, clip_wav(wav, rate), ".wav", overwrite=overwrite)
    except FileExistsError:
        raise APIError(409, f"a voice named {name!r} exists already", param="name", code="voice_exists") from None
    except ValueError as exc:
        raise bad_request(str(exc), "file", "invalid_audio") from None
    return {"id": name, "object": "voice", "type": "custom", "seconds": round(len(wav) / rate, 3)}


@router.delete("/v1/audio/voices/{name}", summary="Delete a library voice")
async def delete_voice(request: Request, name: str) -> dict:
    library = request.app.state.catalog.require_library()
    name = _name(name)
    try:
        await run_in_threadpool(library.delete, name)
    except KeyError:
        raise APIError(404, f"no voice named {name!r} in the library", param="name", code="voice_not_found") from None
    return {"id": name, "object": "voice", "deleted": True}


def _name(name: str) -> str:
    try:
        return check_voice_name(name)
    except ValueError as exc:
        raise bad_request(str(exc), "name", "invalid_voice_name") from None
