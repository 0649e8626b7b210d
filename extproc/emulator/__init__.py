"""An in-process Azure OpenAI emulator for tests and for local runs without Azure.

    emu = await start_emulator(EmulatorSettings())
    client = AzureOpenAI(azure_endpoint=emu.url, api_key="emulator-key", api_version="2024-10-21")
"""

from .journal import RecordedRequest
from .server import RunningEmulator, build_app, start_emulator
from .settings import DEFAULT_API_KEY, DEFAULT_API_VERSIONS, DEFAULT_DEPLOYMENTS, EmulatorSettings

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_API_VERSIONS",
    "DEFAULT_DEPLOYMENTS",
    "EmulatorSettings",
    "RecordedRequest",
    "RunningEmulator",
    "build_app",
    "start_emulator",
]
