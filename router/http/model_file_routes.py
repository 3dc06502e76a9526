"""`GET /v1/model-files/{sha256}`: the bytes of a published repository model file, for agents that
do not see the repository folder (agent/model_files.py fetches, verifies and caches them).

Only files the router has published (a served or loading model's versions) are served, looked up
by their content hash: no path from the request ever reaches the file system.
"""

from __future__ import annotations

import re

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from common.errors import BadRequest, UnknownModel
from router.control.model_folder import FILES_PATH, FolderModels
from router.http.openapi import error_responses

SHA256 = re.compile(r"[0-9a-f]{64}")
CHUNK_BYTES = 1 << 20  # read and sent 1 MiB at a time: a large model never sits in memory


def model_file_routes(folder: FolderModels) -> APIRouter:
    router = APIRouter(tags=["Model files (agents)"])

    @router.get(
        FILES_PATH + "/{sha256}",
        summary="A repository model file by its sha256 (agents fetch what they lack)",
        responses={200: {"description": "the file's bytes", "content": {
            "application/octet-stream": {}}}, **error_responses(400, 404)},
    )  # fmt: skip
    async def model_file(sha256: str) -> Response:
        if not SHA256.fullmatch(sha256):
            raise BadRequest(f"{sha256!r} is not a sha256 (64 lowercase hex digits)")
        path = folder.path_of(sha256)
        if path is None or not path.is_file():
            raise UnknownModel(f"no published model file has sha256 {sha256}; load the model "
                               "first (POST /v2/repository/models/{m}/load)")  # fmt: skip
        response = FileResponse(path, media_type="application/octet-stream")
        response.chunk_size = CHUNK_BYTES
        return response

    return router
