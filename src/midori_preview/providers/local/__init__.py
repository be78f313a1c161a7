from midori_preview.providers.local.provider import LocalProvider, LocalProviderConfig

__all__ = ["LocalProvider", "LocalProviderConfig"]
