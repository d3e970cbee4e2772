"""Plans, subscriptions, credit packs and Stripe webhooks."""
