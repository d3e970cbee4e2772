// /docs: Swagger UI from the app's packaged copy (no CDN), pointed at this app's OpenAPI.
const root = document.getElementById('swagger-ui');
window.SwaggerUIBundle({
  url: root.dataset.openapiUrl,
  domNode: root,
  deepLinking: true,
  validatorUrl: null,  // the default validator is a third-party site
  tryItOutEnabled: false,
});
