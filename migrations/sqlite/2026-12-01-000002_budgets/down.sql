DROP TABLE turn_usage;
DROP TABLE user_budgets;
