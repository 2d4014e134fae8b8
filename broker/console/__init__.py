"""The management console: server-rendered pages under /ui, a front door over the same services and gate as the API.

`broker.console.web.init_app(app)` registers it; this package's import has no side effects (settings import
`broker.console.config`).
"""
