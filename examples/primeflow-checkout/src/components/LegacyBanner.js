// Aviso da interface antiga (remover quando a migração para a 3.x terminar).
(function (window) {
  'use strict';
  var ns = (window.PrimeFlow = window.PrimeFlow || { components: {} });
  ns.components.LegacyBanner = function LegacyBanner() {
    var el = window.document.createElement('div');
    el.className = 'pf-banner';
    el.textContent = 'Você está usando a nova interface. A interface antiga será desativada na versão 3.1.';
    return el;
  };
})(window);
