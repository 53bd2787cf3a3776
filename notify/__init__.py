"""Email: what the tutor sends, and an outbox that loses nothing.

`templates/` and `render` turn a template name and a payload into subject, plain text and HTML
(Jinja2, per language, with an unsubscribe link for non-transactional mail: `unsubscribe`).
Every message is first a row of `email_notifications`, written in the transaction of the change
that caused it (`store.queries.enqueue_email`); `worker` claims due rows and sends them through
a `Transport`: `smtp` (aiosmtplib), `mcp` (an MCP client calling an email tool server's
`send_email`; `mcp_server` is that tool server, `tutor mcp-email`), or `log` for development.
`events` decides what is sent when (welcome, payments, quota, weekly summaries), `routes` serves
`/api/email`.
"""
