DROP TABLE user_allowances;
DROP TABLE usage_daily;
