DROP TABLE webhook_budget_marks;
DROP TABLE webhook_deliveries;
DROP TABLE webhooks;
