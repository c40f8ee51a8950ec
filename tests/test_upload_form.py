"""The upload form, read in-process: limits a function asks for, its name."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests import modules
from tests.support import upload
from wasmq.api import openapi, upload_form
from wasmq.broker.settings import Settings

pytestmark = pytest.mark.fast

TIMEOUT_S = 2


@pytest.fixture()
def settings(settings: Settings) -> Settings:
    return replace(settings, task_timeout=TIMEOUT_S, max_memory_mb=16, max_input_mb=1,
                   max_output_mb=1)


def test_upload_limits_are_capped_by_the_server_maximum(client) -> None:
    response = upload(client, modules.ECHO, timeout_s="3600", max_memory_mb="4",
                      max_output_mb="0.5", max_input_mb="99")
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["limits"] == {"timeout_s": TIMEOUT_S, "max_memory_mb": 4,
                                             "max_input_mb": 1, "max_output_mb": 0.5}


@pytest.mark.parametrize("fields", [{"timeout_s": "soon"}, {"max_memory_mb": "-1"},
                                    {"max_output_mb": "nan"}, {"max_memory_mb": "0.01"},
                                    {"max_input_mb": "inf"}])
def test_upload_refuses_limits_that_are_not_positive_numbers(client,
                                                             fields: dict[str, str]) -> None:
    response = upload(client, modules.ECHO, **fields)
    assert response.status_code == 400
    assert response.get_json()["statusCode"] == 0
    assert next(iter(fields)) in response.get_json()["message"]


def test_an_upload_without_limits_keeps_the_servers(client) -> None:
    response = upload(client, modules.ECHO)
    assert response.status_code == 201
    assert not response.get_json().get("limits")


@pytest.mark.parametrize("name", [None, "", "   "])
def test_a_nameless_upload_takes_the_files_name_as_wasmq_deploy_does(client,
                                                                     name: str | None) -> None:
    response = upload(client, modules.ECHO, name=name, filename="intsum.wasm")
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["name"] == "intsum"


def test_a_given_name_is_kept(client) -> None:
    response = upload(client, modules.ECHO, name="my sum", filename="intsum.wasm")
    assert response.get_json()["name"] == "my sum"


def test_the_openapi_document_names_the_same_limit_fields_the_form_reads() -> None:
    assert set(openapi.LIMIT_FIELDS) == set(upload_form.LIMIT_FIELDS)
