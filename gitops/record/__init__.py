"""Record: what happened, in the database: change log, intents, inventory, events, notifications."""
