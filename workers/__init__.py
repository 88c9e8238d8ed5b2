"""dispatch-lab: the AMQP side (workers, publisher, broker plumbing); no Textual here."""
