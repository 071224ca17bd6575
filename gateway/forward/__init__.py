"""The forwarding path: everything between a routing plan and the client's last byte.

``orchestrator`` sequences one request (plan, first token, deliver, resume); the parts it
calls receive what they need and return a result, nothing below calls back up.  The rest of
``gateway`` enters through ``orchestrator.Orchestrator`` (built in ``gateway.app``, called by
``gateway.handlers``) and reads a finished request's record, ``exchange.Exchange``."""
