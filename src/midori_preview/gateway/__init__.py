"""The preview gateway: every preview, on any provider, is served at the service's own preview
hosts `{port}-{label}.{PREVIEW_BASE_DOMAIN}`.

| module | what |
|---|---|
| `labels.py` | host labels, their signatures and the links callers get (pure) |
| `gateway.py` | `PreviewGateway`: host → sandbox, credential, state → page, channel or proxy |
| `proxy.py` | HTTP forwarding, streamed both ways, headers filtered |
| `websocket.py` | WebSocket pass-through (a dev server's hot reload) |
| `pages.py` | the building / stopped / notice pages and their static script and style |
| `channel.py` | `/__midori/events`: a sandbox's events, same-origin, for the pages |

Nothing here is imported by the lifecycle except `labels` (kept free of I/O for that reason)."""
