"""All tables; importing this module registers them on Base.metadata."""

from db.models.activity import ActivityEvent
from db.models.avatars import Avatar
from db.models.billing import BillingOperation, StripeEvent, SubscriptionPlan, UserSubscription
from db.models.content import GeneratedContent
from db.models.credits import CreditTransaction, UserCredits
from db.models.events import UserEvent
from db.models.idempotency import IdempotencyKey
from db.models.usage import AvatarUsageHour, UsageBucket
from db.models.users import AuthToken, RefreshToken, User

__all__ = [
    "ActivityEvent", "Avatar", "AvatarUsageHour", "AuthToken", "BillingOperation", "CreditTransaction",
    "GeneratedContent", "IdempotencyKey", "RefreshToken", "StripeEvent", "SubscriptionPlan", "UsageBucket",
    "User", "UserCredits", "UserEvent", "UserSubscription",
]
