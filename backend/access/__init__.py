"""Who may reach the backend: its CURVE keys and the clients and workers it trusts (:mod:`.auth`), and the
endpoints it may listen on (:mod:`.endpoints`). Below the server."""
